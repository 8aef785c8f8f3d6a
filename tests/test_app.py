"""The Gradio app through a real in-process server and gradio_client: streaming, metrics, bad input, Stop,
and space.yaml as the one source of the Space metadata."""

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from layercache.schedule import Schedule

gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
# model, prompt, seed, steps, guidance, budget, groups, max_k, method, threshold
GOOD = ("tiny", "seven", 0, STEPS, 3.0, 0.7, 3, 3, "LayerCache", 0.1)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    os.environ["LAYERCACHE_CACHE_DIR"] = str(tmp_path_factory.mktemp("calibrations"))
    import app

    app.configure_torch()
    demo = app.build_demo()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield gradio_client.Client(demo.local_url, verbose=False, download_files=False)
    demo.close()


def run(client, *args):
    job = client.submit(*args, api_name="/run")
    return list(job), job


def test_streams_one_update_per_step_then_final_metrics(client):
    outputs, job = run(client, *GOOD)
    statuses = [out[0] for out in outputs]
    steps_seen = [s for s in statuses if s.startswith("**Step ")]
    assert [s.split("/")[0] for s in steps_seen] == [f"**Step {i}" for i in range(1, STEPS + 1)]
    assert statuses[-1].startswith("**Done") and statuses.index(steps_seen[-1]) < len(statuses) - 1
    metrics = outputs[-1][6]
    for key in ("psnr_db", "ssim", "wall_speedup", "compute_speedup", "time_uncached_s", "time_cached_s"):
        assert metrics[key] is not None, key
    assert metrics["lpips"] is None and "LPIPS" in metrics["lpips_note"]
    assert 0 < metrics["compute_speedup"] and metrics["ssim"] > 0.5
    assert outputs[-1][1] is not None and outputs[-1][7] is not None  # previews and difference image
    assert "calibrated" in outputs[-1][9]  # no shipped calibration at 6 steps: made on first use and kept


@pytest.mark.parametrize("field, value, words", [
    (1, "", "empty"), (1, "banana", "digit"), (3, 0, "steps"), (5, 0, "budget"), (5, 1.5, "budget"),
    (0, "../../etc/passwd", "list"), (0, "qwen-image", "CUDA"), (8, "magic", "list")])
def test_bad_input_is_a_visible_error_and_the_app_keeps_serving(client, field, value, words):
    args = list(GOOD)
    args[field] = value
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(*args, api_name="/run")
    message = str(err.value).lower()  # ours names the field; Gradio's slider bounds check says "minimum/maximum value"
    assert words.lower() in message or "imum value" in message
    outputs, _ = run(client, *GOOD)
    assert outputs[-1][0].startswith("**Done")


def test_cancel_mid_run_then_the_next_run_is_unchanged(client):
    reference, _ = run(client, *GOOD[:2], 7, *GOOD[3:])
    job = client.submit(*GOOD[:2], 7, *GOOD[3:], api_name="/run")
    for out in job:
        if out[0].startswith("**Step 2"):
            job.cancel()
            break
    client.predict(api_name="/stop")
    again, _ = run(client, *GOOD[:2], 7, *GOOD[3:])
    for key in ("psnr_db", "ssim", "compute_fraction"):
        assert again[-1][6][key] == reference[-1][6][key]


def first_step_then(client, action, steps=50):
    """Start a long run, do `action()` once its first step has streamed, return the run's outputs."""
    # MeanCache on a shipped calibration (4 groups): nothing to calibrate or check first, the run starts at once
    job = client.submit(*GOOD[:3], steps, 3.0, 0.7, 4, 3, "MeanCache", 0.1, api_name="/run")
    outputs = []
    for out in job:
        outputs.append(out)
        if len(outputs) == 1:
            action()
    return outputs


def test_stop_ends_the_run_with_its_own_stopped_update(client):
    outputs = first_step_then(client, lambda: client.predict(api_name="/stop"))
    assert outputs[-1][0].startswith("**Stopped") and len(outputs) < 50
    assert not any(out[0].startswith("**Done") for out in outputs)


def test_stop_from_another_session_leaves_the_run_alone(client):
    other = gradio_client.Client(client.src, verbose=False, download_files=False)
    outputs = first_step_then(client, lambda: other.predict(api_name="/stop"), steps=20)
    assert outputs[-1][0].startswith("**Done")


def test_a_stop_before_the_run_exists_is_not_lost(monkeypatch):
    import app

    prepare = app.bench.method

    def stopped_while_preparing(*args, **kwargs):  # e.g. while a hub model calibrates
        app.stop(None)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(app.bench, "method", stopped_while_preparing)
    outputs = list(app.run(*GOOD))
    assert len(outputs) == 1 and outputs[0][0].startswith("**Stopped")
    monkeypatch.undo()
    assert list(app.run(*GOOD))[-1][0].startswith("**Done")  # and the next run is not stopped


def test_a_run_stopped_while_queued_never_starts():
    import time

    import app

    clicked = time.monotonic()
    app.stop(None)  # the same (local) session, after the click
    outputs = list(app.run(*GOOD, clicked_at=clicked))
    assert len(outputs) == 1 and outputs[0][0].startswith("**Stopped")


@pytest.mark.parametrize("method", ["FirstBlockCache (diffusers)", "MeanCache", "LayerCache, K=1 (no JVP)",
                                    "LayerCache, per group"])
def test_other_methods_in_the_cached_lane(client, method):
    outputs, _ = run(client, "tiny", "3", 1, STEPS, 3.0, 0.7, 3, 3, method, 0.2)
    metrics = outputs[-1][6]
    assert metrics["method"] == method and metrics["compute_speedup"] >= 1 and metrics["ssim"] > 0.3


def test_the_second_bundled_model_runs_in_the_app(client):
    """The FLUX-family bundled model streams and ends with metrics like the default one."""
    outputs, _ = run(client, "tiny-flux", "4", 2, STEPS, 3.0, 0.5, 4, 3, "LayerCache", 0.1)
    metrics = outputs[-1][6]
    assert outputs[-1][0].startswith("**Done") and metrics["compute_speedup"] > 1.5 and metrics["ssim"] > 0.3
    assert outputs[-1][1] is not None and outputs[-1][2] is not None


def test_explore_view(client):
    velocity, stability, note = client.predict("tiny", "two", 3, STEPS, 3, 4, 3.0, api_name="/explore")
    assert "Heterogeneity ratio" in note and ("behave alike" in note or "more stable than" in note)
    assert "| 2 | 8–11 |" in note and velocity and stability


def test_space_yaml_is_the_source_of_front_matter_and_defaults():
    import app
    from layercache.studio import space

    data = yaml.safe_load((ROOT / "space.yaml").read_text())
    rendered = space.front_matter()
    assert rendered.startswith("---\n") and rendered.endswith("---\n")
    front = yaml.safe_load(rendered.strip("-\n"))
    assert front == {**data["space"], **{k: front[k] for k in ("models", "preload_from_hub")}}  # those two rendered
    for key in ("sdk", "sdk_version", "app_file", "python_version", "suggested_hardware", "models", "preload_from_hub"):
        assert key in front, key
    assert len(front["models"]) == len(front["preload_from_hub"]) == len(data["serve"]["models"])
    import gradio
    assert data["space"]["sdk_version"] == gradio.__version__ and (ROOT / data["space"]["app_file"]).is_file()
    assert app.DEFAULTS == data["defaults"]
    assert not math.isnan(app.DEFAULTS["budget"])


def test_readme_front_matter_in_sync_with_space_yaml():
    from layercache.studio import space

    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not written yet")
    assert space.in_sync(readme), "README front matter differs from space.yaml: paste `python -m layercache space`"


def test_viz_figures_keep_zoom_and_show_values():
    import numpy as np

    from layercache.studio import viz

    grids = viz.empty_grids(5, 3)
    viz.record_step(grids, {"step": 2, "groups": [
        {"computed": 1.0, "k": None, "velocity_change": 0.25}, {"computed": 0.0, "k": 3, "velocity_change": None},
        {"computed": 1.0, "k": None, "velocity_change": None}]})
    velocity, computed, k = viz.heatmaps(grids, max_k=4)
    assert {f.layout.uirevision for f in (velocity, computed, k)} == {viz.UIREVISION}
    assert computed.data[0].z[1][2] == 0.0 and k.data[0].z[1][2] == 3 and velocity.data[0].z[0][2] == 0.25
    assert k.data[0].z[0][2] is None and "%{z" in k.data[0].hovertemplate
    big = viz.to_display(np.full((32, 32), 0.5))
    assert big.shape == (256, 256) and big.dtype == np.uint8 and big[0, 0] == 128
    diff = viz.difference_image(np.zeros((2, 2)), np.full((2, 2), 0.01))
    assert np.allclose(diff, 0.1)


@pytest.mark.parametrize("steps", [2, 10])
def test_every_budget_the_slider_offers_plans_for_every_method(steps, tmp_path, monkeypatch):
    """The slider's lower end (and the K slider's ends) with every method: a plan, never an error about a setting
    the app does not show. 10 steps uses the shipped calibration; 2 steps calibrates on first use."""
    import app
    import layercache.studio.workbench as workbench
    from layercache.studio.workbench import Workbench

    monkeypatch.setenv("LAYERCACHE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(workbench, "calibration_calls", lambda key: [{"label": [1, 7], "seed": 1}])  # for 2 steps
    bench = Workbench()
    for method in app.METHODS:
        for budget in (app.BUDGET_MIN, 1.0):
            for max_k in (1, app.MAX_K):
                cached, _ = bench.method("tiny", method, steps, 4, budget, max_k)
                schedule = getattr(cached, "schedule", None)
                if schedule is not None:  # whole-step plans round N·budget half up, at least step 0
                    assert schedule.num_steps == steps
                    assert schedule.compute_fraction <= max(budget + 0.5 / steps, 1 / steps) + 1e-9
                    assert schedule.max_k <= max_k or not app.METHODS[method].uses_k
                if method == "LayerCache":   # the finalists ran again on inputs they were not chosen on
                    assert cached.params["rechecked"]


def test_results_are_labelled_figures_and_the_history_comes_with_the_run(client):
    outputs, _ = run(client, *GOOD)
    readout, history_rows = outputs[-1][10], outputs[-1][11]
    for words in ("PSNR", "SSIM", "Compute speed-up", "Wall speed-up", "what it means", "LPIPS"):
        assert words in readout
    assert f"**{outputs[-1][6]['psnr_db']} dB**" in readout
    assert history_rows["data"][-1][:3] == ["tiny", "LayerCache", STEPS]


def test_a_painted_schedule_runs_in_the_cached_lane(client):
    """/plan puts the planner's schedule in this session's editor; /run_schedule runs what the editor holds."""
    painter = gradio_client.Client(client.src, verbose=False, download_files=False)
    with pytest.raises(gradio_client.exceptions.AppError, match="no schedule"):
        painter.predict(*GOOD[:5], GOOD[6], GOOD[7], api_name="/run_schedule")   # nothing painted yet
    _, note, path = painter.predict("tiny", STEPS, 0.5, 3, 3, api_name="/plan")
    planned = json.loads(Path(path["path"]).read_text())   # the download, written on this machine
    assert "runs **" in note and planned["num_steps"] == STEPS
    outputs = list(painter.submit(*GOOD[:5], 3, 3, api_name="/run_schedule"))
    metrics = outputs[-1][6]
    assert outputs[-1][0].startswith("**Done") and metrics["method"] == "Your schedule"
    assert metrics["compute_fraction"] == pytest.approx(Schedule.from_json(planned).compute_fraction, abs=1e-3)
    with pytest.raises(gradio_client.exceptions.AppError, match="Groups to 3"):   # painted for 3 groups, not 4
        painter.predict(*GOOD[:5], 4, 3, api_name="/run_schedule")


CLIENTS = 8


def test_a_room_of_clients_each_sees_its_own_stream_history_and_stop(client):
    """8 sessions submit at once: each stream carries its own steps, each history only its own runs; the queue
    position is reported while waiting; one session's Stop, once its run streams, ends only that run."""
    import threading

    clients = [gradio_client.Client(client.src, verbose=False, download_files=False) for _ in range(CLIENTS)]
    stopper = 3   # this session runs longer (a shipped calibration, nothing to plan) and stops after its first step
    long_run = ("tiny", "seven", 103, 20, 3.0, 0.7, 4, 3, "MeanCache", 0.1)
    jobs = [c.submit(*(long_run if i == stopper else ("tiny", "seven", 100 + i, *GOOD[3:])), api_name="/run")
            for i, c in enumerate(clients)]
    ranks, results = [], {}

    def collect(i):
        results[i] = []
        for out in jobs[i]:
            results[i].append(out)
            if i == stopper and len(results[i]) == 1:
                clients[i].predict(api_name="/stop")

    threads = [threading.Thread(target=collect, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):   # the queue position the UI shows comes from these
        ranks.extend(job.status().rank or 0 for job in jobs)
    assert max(ranks) >= 1   # some run waited in the queue and was told its place
    stopped = results.pop(stopper)
    assert stopped[-1][0].startswith("**Stopped") and len(stopped) < 20
    for i, outputs in results.items():
        assert outputs[-1][0].startswith("**Done"), i
        assert sum(out[0].startswith("**Step ") for out in outputs) == STEPS
        assert len(outputs[-1][11]["data"]) == 1   # its own run only
    again = list(clients[0].submit("tiny", "seven", 7, STEPS, *GOOD[4:], api_name="/run"))
    assert len(again[-1][11]["data"]) == 2   # this session's two runs, none of the others'


def test_a_full_queue_says_so(tmp_path):
    import app

    demo = app.build_demo(queue_size=1)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        clients = [gradio_client.Client(demo.local_url, verbose=False, download_files=False) for _ in range(4)]
        jobs = [c.submit(*GOOD, api_name="/run") for c in clients]
        errors = []
        for job in jobs:
            try:
                job.result(timeout=600)
            except Exception as err:   # noqa: BLE001 - the client raises what the server said
                errors.append(str(err))
        assert errors and all("queue is full" in e.lower() for e in errors), errors
    finally:
        demo.close()


def test_the_app_grid_script_compares_methods_through_the_server(client, tmp_path, capsys):
    from scripts_loader import load_script

    grid = load_script("app_grid")
    out = tmp_path / "grid.json"
    grid.main(["--url", client.src, "--models", "tiny", "--steps", str(STEPS), "--budgets", "1,0.5",
               "--inputs", "7:900,3:901", "--max-k", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["steps"], r["budget"], r["max_k"]) for r in rows] == [(STEPS, 1.0, 2), (STEPS, 0.5, 2)]
    assert all(math.isinf(p) for psnr in rows[0]["psnr_db"].values() for p in psnr)   # all computed: exact
    assert all(len(psnr) == 2 and all(math.isfinite(p) for p in psnr) for psnr in rows[1]["psnr_db"].values())
    assert f"| {STEPS} | 0.5 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):   # a calibration seed is not an evaluation input
        grid.parse(["--inputs", "7:2"])
