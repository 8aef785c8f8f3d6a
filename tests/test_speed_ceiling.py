"""scripts/speed_ceiling.py: what the pipeline's time outside the transformer leaves a cache whose reuse is free."""

import json
import sys

import pytest
from scripts_loader import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("speed_ceiling")


def test_the_ceiling_is_the_ideal_only_when_nothing_runs_outside_the_transformer(script):
    assert script.ceiling_of_ideal(1.0, 1.0, 5.0) == pytest.approx(1.0)
    # 10% outside, 5x ideal: 1 / (0.9 / 5 + 0.1) = 3.57x, 0.714 of ideal
    assert script.ceiling_of_ideal(1.0, 0.9, 5.0) == pytest.approx(1 / 0.28 / 5)
    assert script.ceiling_of_ideal(1.0, 0.9, 2.0) > script.ceiling_of_ideal(1.0, 0.9, 5.0)


def test_cells_below_090_are_listed_with_their_ceiling_and_meancache(script, tmp_path, monkeypatch, capsys):
    def record(method, budget, wall):
        return {"method": method, "budget": budget, "steps": 10, "speedup_wall": wall, "speedup_ideal": 1 / budget}

    path = tmp_path / "row.json"
    path.write_text(json.dumps({"meta": {"model": "tiny"}, "records": [
        record("layercache", 0.5, 1.9), record("layercache", 0.2, 4.0), record("meancache", 0.2, 4.6)]}))
    monkeypatch.setattr(script, "load_pipeline", lambda model: type("Pipe", (), {
        "set_progress_bar_config": lambda self, **kw: None})())
    monkeypatch.setattr(script, "image_and_transformer_time", lambda pipe, steps, images: (1.0, 0.98))
    monkeypatch.setattr(sys, "argv", ["speed_ceiling.py", str(path)])
    script.main()
    out = capsys.readouterr().out
    ceiling = script.ceiling_of_ideal(1.0, 0.98, 5.0)
    assert f"| tiny | 10 | 0.2 | 5.00× | 1000.0 | 20.0 ms (2.0%) | 0.800 | {ceiling:.3f} | 0.920 |" in out
    assert "below 0.90 of ideal in 1 cells" in out
    assert f"tiny 10 / 0.2: 0.800 (ceiling {ceiling:.3f}, MeanCache 0.920)" in out
