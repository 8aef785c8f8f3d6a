"""`python -m layercache gpu-app`, run with --tiny on the CPU: the app's two-lane runner on each hub pipeline class
with tiny random weights must stream, time and report every field (its figures only mean something on a GPU)."""

import re

from layercache import cli


def test_gpu_app_runs_the_runner_on_every_hub_family_and_prints_each_field(capsys):
    assert cli.main(["gpu-app", "--tiny", "--steps", "4"]) == 0  # the default 4 groups, as on a GPU
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("model")][0]
    for field in ("peak", "first step", "uncached step", "cached step", "preview", "realized", "ideal",
                  "realized/ideal"):
        assert field in header, field
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(rows) == {"qwen-image", "flux-dev", "sd35-medium"}
    for row in rows.values():
        first, uncached, cached, preview = (float(x) for x in re.findall(r"(\d+\.\d+)(?:s|ms) ", row + " ")[:4])
        assert first > 0 and uncached > 0 and cached > 0 and preview > 0
        realized, ideal, ratio = (float(x) for x in re.findall(r"(\d+\.\d+)x?", row)[-3:])
        assert ideal > 1 and realized > 0 and abs(ratio - realized / ideal) < 2e-3


def test_gpu_app_rejects_bad_input_before_building(capsys):
    assert cli.main(["gpu-app", "--tiny", "--models", "sdxl"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli.main(["gpu-app", "--tiny", "--budget", "1.5"]) == 2
    assert "budget" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert cli.main(["gpu-app", "--models", "flux-dev"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
