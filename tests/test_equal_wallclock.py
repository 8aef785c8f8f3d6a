"""scripts/equal_wallclock.py: a peer's curve is read between its measured points only, never extrapolated."""

import json
import sys

import pytest
from scripts_loader import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("equal_wallclock")


def record(method, budget, wall, psnr):
    return {"method": method, "budget": budget, "steps": 10, "speedup_wall": wall, "psnr": psnr}


RECORDS = [record("uncached", 1.0, 1.0, 100.0),
           record("meancache", 0.5, 2.0, 40.0), record("meancache", 0.25, 4.0, 30.0),
           record("layercache", 0.5, 1.5, 45.0), record("layercache", 0.25, 3.0, 36.0),
           record("layercache-k1", 0.25, 3.5, 20.0)]


def test_a_peer_is_read_linearly_between_its_points_and_not_outside_them(script):
    assert script.peer_at(RECORDS, "meancache", 3.0) == pytest.approx(35.0)
    assert script.peer_at(RECORDS, "meancache", 4.0) == pytest.approx(30.0)
    assert script.peer_at(RECORDS, "meancache", 1.5) is None
    assert script.peer_at(RECORDS, "meancache", 4.5) is None


def test_the_table_compares_layercache_with_its_peers_not_its_ablations(script, tmp_path, monkeypatch, capsys):
    path = tmp_path / "row.json"
    path.write_text(json.dumps({"meta": {"model": "tiny", "repeats": 15}, "records": RECORDS}))
    monkeypatch.setattr(sys, "argv", ["equal_wallclock.py", str(path)])
    script.main()
    out = capsys.readouterr().out
    assert "| tiny | 10 | 15 | 0.25 | 3.00 | 36.00 | meancache | 35.00 | +1.00 |" in out
    assert "– (outside every peer's speed-ups)" in out   # budget 0.5: 1.5x is below every peer speed-up
    assert "layercache-k1 |" not in out
    assert "at or above the best peer's curve in 1 cells, below in 0; 1 outside" in out
