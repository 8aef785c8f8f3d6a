"""The bench command: bad input fails fast with one line, and an accelerate run on 2 CPU processes
merges to exactly the per-image metrics of a single-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layercache import cli
from layercache.evaluation import bench

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["--model", "tiny", "--methods", "meancache", "--budgets", "0.5", "--seeds", "100-101", "--steps", "4"]


def _with(flag, value):
    args = list(GOOD)
    args[args.index(flag) + 1] = value
    return args


BAD = {
    "unknown method": (_with("--methods", "meancache,teacache"), "unknown method"),
    "empty methods": (_with("--methods", ","), "empty"),
    "unknown model": (_with("--model", "sdxl"), "unknown model"),
    "hub model": (_with("--model", "flux-dev"), "bundled models only"),
    "budget zero": (_with("--budgets", "0.5,0"), "outside (0, 1]"),
    "budget above one": (_with("--budgets", "1.5"), "outside (0, 1]"),
    "budget not a number": (_with("--budgets", "half"), "numbers in (0, 1]"),
    "empty seeds": (_with("--seeds", ""), "no seeds"),
    "reversed range": (_with("--seeds", "119-100"), "empty"),
    "bad seeds": (_with("--seeds", "1OO"), "range like"),
    "calibration seeds": (_with("--seeds", "0-5"), "calibration seeds"),
    "recheck seeds": (_with("--seeds", "4,100"), "seeds [4] are calibration seeds"),
    "steps": (_with("--steps", "1"), "--steps"),
    "steps list": (_with("--steps", "10,x"), "--steps"),
    "reused call cost": ([*GOOD, "--reused-call-cost", "1"], "--reused-call-cost takes 'measure' or"),
    "reused call cost word": ([*GOOD, "--reused-call-cost", "auto"], "in [0, 1)"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_fails_before_model_work(name, tmp_path, monkeypatch, capsys):
    import layercache.models.registry as registry

    monkeypatch.setattr(registry, "load_pipeline", lambda *a, **k: pytest.fail("model loaded before validation"))
    argv, message = BAD[name]
    assert cli.main(["bench", *argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_bad_output_folder(tmp_path, capsys):
    assert cli.main(["bench", *GOOD, "--out", str(tmp_path / "missing" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _earlier(path, **meta):
    """A results file as bench writes it: meancache and fewer-steps at budget 0.5, 4 steps, seeds 100-101."""
    def record(method, psnr):
        budget = 0.5 if method != "uncached" else 1.0
        return {"method": method, "budget": budget, "steps": 4, "psnr": psnr, "ssim": 0.5, "fidelity": 1.0,
                "compute_fraction": budget, "speedup_wall": None}

    meta = {"command": "python -m layercache bench (earlier)", "model": "tiny", "seeds": [100, 101], "steps": [4],
            "batch": 10, **meta}
    path.write_text(json.dumps({"meta": meta, "records": [record("uncached", 100.0), record("meancache", 12.5),
                                                          record("fewer-steps", 11.0)]}))


@pytest.mark.parametrize("meta, message", [(None, "does not exist; drop --update"),
                                           ({"seeds": [100, 102]}, "--seeds [100, 102] (asked [100, 101])"),
                                           ({"model": "tiny-flux"}, "--model tiny-flux (asked tiny)"),
                                           ({"steps": [10]}, "--steps [10] (asked [4])"),
                                           ("{}", "not a bench results file")])
def test_update_needs_an_earlier_run_on_the_same_images(meta, message, tmp_path, monkeypatch, capsys):
    import layercache.models.registry as registry

    monkeypatch.setattr(registry, "load_pipeline", lambda *a, **k: pytest.fail("model loaded before validation"))
    out = tmp_path / "r.json"
    if isinstance(meta, dict):
        _earlier(out, **meta)
    elif meta is not None:
        out.write_text(meta)
    before = out.read_text() if out.exists() else None
    assert cli.main(["bench", *GOOD, "--update", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --update") and message in err, err
    assert (out.read_text() if out.exists() else None) == before   # nothing lost


def test_update_replaces_the_rerun_methods_records_and_keeps_the_others(tmp_path, capsys):
    out = tmp_path / "r.json"
    _earlier(out)
    assert cli.main(["bench", "--model", "tiny", "--methods", "fewer-steps", "--budgets", "0.5,0.25", "--seeds",
                     "100-101", "--steps", "4", "--repeats", "0", "--update", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    kept = {(r["method"], r["budget"]): r for r in result["records"]}
    assert list(kept) == [("uncached", 1.0), ("meancache", 0.5), ("fewer-steps", 0.5), ("fewer-steps", 0.25)]
    assert kept["meancache", 0.5]["psnr"] == 12.5                      # not rerun: kept as it was
    assert kept["fewer-steps", 0.5]["psnr"] != 11.0 and kept["fewer-steps", 0.5]["n"] == 2   # rerun here
    assert kept["uncached", 1.0]["n"] == 2
    assert result["meta"]["command"].endswith("--update")
    assert result["meta"]["earlier_runs"][0]["command"] == "python -m layercache bench (earlier)"
    assert "meancache             0.500   0.500   12.50" in capsys.readouterr().out   # the merged table printed


def test_cli_subcommand_bad_input_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "layercache", "bench", "--budgets", "0", "--out", "r.json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_parsers():
    assert bench.parse_seeds("100-102,105, 101") == [100, 101, 102, 105]
    assert bench.parse_budgets("0.5,1,0.5") == [1.0, 0.5]
    assert bench.parse_methods("all")[0] == "layercache"
    assert bench.parse_steps("50,10, 20,10") == [10, 20, 50]


def test_grid_names_the_best_peer_per_cell_and_skips_ablations():
    def record(method, steps, budget, psnr):
        return {"method": method, "steps": steps, "budget": budget, "psnr": psnr}

    records = [record("uncached", 10, 1.0, 100), record("layercache", 10, 0.5, 30.0),
               record("layercache-k1", 10, 0.5, 40.0), record("meancache", 10, 0.5, 31.5),
               record("taylorseer", 10, 0.5, 29.0), record("layercache", 20, 0.25, 28.0),
               record("meancache", 20, 0.25, 27.0)]
    lines = bench.grid(records).splitlines()
    assert lines[2] == "| 10 | 0.5 | 30.00 | meancache 31.50 | -1.50 |"
    assert lines[3] == "| 20 | 0.25 | **28.00** | meancache 27.00 | +1.00 |"
    assert lines[-1] == "tiny: LayerCache ahead in 1 of 2 cells, level (within 0.005 dB) in 0, behind in 1; " \
                        "summed margin -0.50 dB"
    def images(values):
        return [{"seed": 100 + i, "psnr": v} for i, v in enumerate(values)]

    paired = [{**record("layercache", 10, 0.5, 30.0), "per_image": images([29, 30, 31])},
              {**record("meancache", 10, 0.5, 31.5), "per_image": images([31, 31.5, 32])}]
    lines = bench.grid(paired).splitlines()   # differences -2, -1.5, -1: SE = 0.5 / √3
    assert lines[2] == "| 10 | 0.5 | 30.00 | meancache 31.50 | -1.50 ± 0.29 |"
    flux = [{**r, "model": "tiny-flux", "psnr": r["psnr"] + 5 * (r["method"] == "layercache")} for r in records]
    lines = bench.grid(records + flux).splitlines()   # a column group per model
    assert lines[0].count("LayerCache PSNR dB") == 2 and "tiny-flux: LayerCache" in lines[0]
    assert lines[2] == "| 10 | 0.5 | 30.00 | meancache 31.50 | -1.50 | **35.00** | meancache 31.50 | +3.50 |"


def _run(prefix, out, env):
    args = [*prefix, "-m", "layercache", "bench", "--methods", "meancache,taylorseer", "--budgets", "0.5",
            "--seeds", "100-103", "--steps", "4", "--batch", "2", "--repeats", "1", "--reused-call-cost", "measure",
            "--out", str(out)]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_accelerate_processes_merge_to_the_single_process_result(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    single = _run([sys.executable], tmp_path / "one.json", env)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    double = _run(launch, tmp_path / "two.json", env)
    assert single["meta"]["processes"] == 1 and double["meta"]["processes"] == 2
    for run in (single, double):   # timed on the main process, the same figure for every process's plans
        assert 0 < run["meta"]["reused_call_cost"] < 1
        assert f"--reused-call-cost {run['meta']['reused_call_cost']:g} " in run["meta"]["command"]
    assert [(r["method"], r["budget"], r["steps"]) for r in single["records"]] == \
           [(r["method"], r["budget"], r["steps"]) for r in double["records"]]
    for one, two in zip(single["records"], double["records"]):
        assert one["n"] == two["n"] == 4
        assert one["per_image"] == two["per_image"]         # same batches, same threads: identical numbers
        assert one["compute_fraction"] == pytest.approx(two["compute_fraction"])
        if one["method"] != "uncached":
            assert one["timing_repeats"] == 1 and two["timing_repeats"] == 2   # one timed pair per process
            assert one["lpips"] is None and one["lpips_reason"]


def test_report_merges_results_files_and_rejects_others(tmp_path):
    def record(method, steps, budget, psnr, wall, ideal):
        return {"method": method, "steps": steps, "budget": budget, "psnr": psnr, "speedup_wall": wall,
                "speedup_ideal": ideal}

    (tmp_path / "a.json").write_text(json.dumps({"records": [record("layercache", 10, 0.5, 30.0, 1.8, 2.0),
                                                             record("meancache", 10, 0.5, 29.0, 1.9, 2.0)]}))
    (tmp_path / "b.json").write_text(json.dumps({"records": [record("layercache", 20, 0.5, 40.0, 1.6, 2.0),
                                                             record("meancache", 20, 0.5, 41.0, 2.0, 2.0)]}))
    (tmp_path / "f.json").write_text(json.dumps({"meta": {"model": "tiny-flux"},
                                                 "records": [record("layercache", 20, 0.5, 42.0, 1.5, 2.0),
                                                             record("meancache", 20, 0.5, 40.0, 1.9, 2.0)]}))
    text = bench.report([tmp_path / "a.json", tmp_path / "b.json"])
    assert "| 10 | 0.5 | **30.00** | meancache 29.00 | +1.00 |" in text
    assert "| 20 | 0.5 | 40.00 | meancache 41.00 | -1.00 |" in text
    assert "| 20 | 0.5 | 1.60 (0.80) | 2.00 (1.00) |" in text
    text = bench.report([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "f.json"])   # the model from meta
    assert "| 10 | 0.5 | **30.00** | meancache 29.00 | +1.00 | – | – | – |" in text
    assert "| 20 | 0.5 | 40.00 | meancache 41.00 | -1.00 | **42.00** | meancache 40.00 | +2.00 |" in text
    assert "| 20 | 0.5 | 1.60 (0.80) | 2.00 (1.00) | 1.50 (0.75) | 1.90 (0.95) |" in text
    assert "tiny-flux layercache wall× (of ideal)" in text
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match="not a bench results file"):
        bench.report([tmp_path / "c.json"])


def test_pareto_figure_draws_every_model_and_method_once_per_step_count():
    def record(model, method, steps, budget, psnr):
        return {"model": model, "method": method, "steps": steps, "budget": budget, "psnr": psnr, "ssim": 0.9,
                "fidelity": 1.0, "compute_fraction": budget, "speedup_wall": 0.9 / budget, "speedup_ideal": 1 / budget}

    records = [record(model, method, steps, b, 30 + b) for model in ("tiny", "tiny-flux")
               for method in ("layercache", "meancache") for steps in (10, 20) for b in (0.5, 0.25)]
    fig = bench.pareto_figure(records)
    names = [trace.name for trace in fig.data]
    assert len(names) == 2 * 2 * 2 * 2   # models × methods × step counts × (wall, ideal)
    assert {trace.name for trace in fig.data if trace.showlegend} == {
        "layercache · tiny", "meancache · tiny", "layercache · tiny-flux", "meancache · tiny-flux"}
    assert {trace.line.dash for trace in fig.data if trace.name.endswith("tiny-flux")} == {"dot"}
    single = bench.pareto_figure([r for r in records if r["model"] == "tiny"])
    assert {trace.name for trace in single.data} == {"layercache", "meancache"}


@pytest.mark.parametrize("model", ["tiny", "tiny-flux"])
def test_overheads_floor_swaps_the_blocks_out_and_back(model):
    """`overhead` times the transformer without its blocks and their inputs (the floor of residual reuse): inside,
    every block is a pass-through and every block input runs once; after, the very same modules are back."""
    import torch

    from layercache.evaluation.overhead import blocks_removed
    from layercache.groups import find_blocks, model_spec
    from layercache.models.registry import load_pipeline

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    before = find_blocks(pipe.transformer)
    inputs = {name: pipe.transformer.get_submodule(name) for name in model_spec(pipe.transformer)["block_inputs"]}

    def image():
        generator = torch.Generator().manual_seed(0)
        return pipe(label=[3], num_inference_steps=2, generator=generator, output_type="pt").images

    reference = image()
    with blocks_removed(pipe.transformer):
        assert all(type(b).__name__ == "_PassThrough" for _, b in find_blocks(pipe.transformer))
        assert all(type(pipe.transformer.get_submodule(name)).__name__ == "_Memo" for name in inputs)
        assert not torch.equal(image(), reference)
    assert [(n, id(b)) for n, b in find_blocks(pipe.transformer)] == [(n, id(b)) for n, b in before]
    assert all(pipe.transformer.get_submodule(name) is module for name, module in inputs.items())
    assert torch.equal(image(), reference)
