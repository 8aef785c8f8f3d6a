"""A Space's startup, as ZeroGPU runs it, without the Hub and without a GPU: a stand-in `spaces` module records what
the app decorates and with which duration; the tiny hub pipelines of tests/hub_fixture.py stand in for the weights
(HF_HUB_OFFLINE=1, LAYERCACHE_DEVICE=cpu). Also: space.yaml's `serve:` section checked at the boundary, and the
`preload_from_hub` lines it renders."""

import fnmatch
import importlib
import sys
import types

import pytest
import torch
from hub_fixture import SAMPLE_SIZE

from layercache.studio import gpu_time, serving, space, workbench

STEPS, GROUPS, BUDGET = 4, 2, 0.5


@pytest.fixture
def spaces_start(offline_hub, tmp_path, monkeypatch):
    """`start()` runs a fresh process's startup: app.py executed anew (its decorators applied by the stand-in
    `spaces`), then `app.startup()`. Calibrations go to one folder across starts, as a Space's /data."""
    decorated = {}
    fake = types.ModuleType("spaces")

    def gpu(duration=None):
        def record(fn):
            decorated[fn.__name__] = duration
            return fn
        return record

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setenv("LAYERCACHE_CACHE_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LAYERCACHE_SERVE", "flux-dev,qwen-image")
    monkeypatch.setattr(workbench, "HUB_CALIBRATION_CALLS", workbench.HUB_CALIBRATION_CALLS[:2])
    import app

    def start():
        decorated.clear()
        importlib.reload(app)
        app.DEFAULTS.update(steps=10)  # the warm-up's bundled-model run: a shipped calibration, a quick plan check
        app.startup()
        for key in ("flux-dev", "qwen-image"):
            if app.bench.is_loaded(key):
                for pipe in app.bench.runner(key).pipes.values():
                    pipe.default_sample_size = SAMPLE_SIZE  # a run in a second, not at 1024 px
        return app, decorated

    threads = torch.get_num_threads()
    yield start
    monkeypatch.undo()
    importlib.reload(app)  # the real `spaces` (absent here) and environment again, for the tests after this one
    torch.set_num_threads(threads)


def run_app(app, key):
    updates = app.run(key, "a red fox", 3, STEPS, 3.5, BUDGET, GROUPS, 2, "LayerCache", 0.1,
                      progress=lambda *a, **k: None)
    return [dict(zip(app.OUTPUTS, update)) for update in updates]


def test_startup_loads_the_served_models_decorates_with_durations_and_keeps_calibrations(spaces_start):
    import gradio as gr

    app, decorated = spaces_start()
    assert app.bench.is_loaded("flux-dev") and app.bench.is_loaded("qwen-image")
    assert not app.bench.is_loaded("sd35-medium")
    # every GPU call is decorated, each with a duration computed from its own arguments
    assert set(decorated) == {"run", "run_schedule", "explore", "planner_schedule"}
    assert all(map(callable, decorated.values()))
    per_step = space.serve()["step_seconds"]["flux-dev"]
    first = decorated["run"]("flux-dev", "a fox", 0, STEPS, 3.5, BUDGET, GROUPS, 2, "LayerCache", 0.1)
    runs = 2 + len(workbench.calibration_calls("flux-dev")) + gpu_time.PLAN_CHECK_RUNS
    assert first == int(gpu_time.ALLOWANCE_S + runs * STEPS * per_step + 0.999)
    assert decorated["explore"]("flux-dev", "a fox", 0, STEPS, GROUPS, 2, 3.5) < first
    assert decorated["planner_schedule"]("flux-dev", STEPS, BUDGET, GROUPS, 2) == \
        int(gpu_time.ALLOWANCE_S + (runs - 2) * STEPS * per_step + 0.999)
    assert decorated["run"]("tiny", "seven", 0, STEPS, 3.0, BUDGET, GROUPS, 2, "LayerCache", 0.1) == \
        app.DEFAULTS["gpu_duration_s"]
    # on ZeroGPU a hub model not loaded at startup is refused, with what to do
    with pytest.raises(gr.Error, match="not served by this Space.*serve.models"):
        run_app(app, "sd35-medium")

    outputs = run_app(app, "flux-dev")  # calibrates and checks the plan inside the run, stores the calibration
    assert outputs[-1]["status"].startswith("**Done") and outputs[-1]["calibration"].startswith("calibrated now")
    lanes_only = decorated["run"]("flux-dev", "a fox", 0, STEPS, 3.5, BUDGET, GROUPS, 2, "LayerCache", 0.1)
    assert lanes_only == int(gpu_time.ALLOWANCE_S + 2 * STEPS * per_step + 0.999)

    app, decorated = spaces_start()  # a restart: the calibration is found on disk; the plan is checked anew
    assert app.bench.calibration_source("flux-dev", STEPS, GROUPS)[0] == "cached"
    again = decorated["run"]("flux-dev", "a fox", 0, STEPS, 3.5, BUDGET, GROUPS, 2, "LayerCache", 0.1)
    assert again == int(gpu_time.ALLOWANCE_S + (2 + gpu_time.PLAN_CHECK_RUNS) * STEPS * per_step + 0.999)
    outputs = run_app(app, "flux-dev")
    assert outputs[-1]["status"].startswith("**Done") and outputs[-1]["calibration"].startswith("cached")


def test_a_model_that_cannot_load_is_one_message_and_the_app_serves_the_rest(offline_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    bench, seen = workbench.Workbench(), []
    monkeypatch.setenv("LAYERCACHE_SERVE", "sd35-medium")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # weights absent, offline
    status = serving.start(bench, zero_gpu=True, log=seen.append)
    assert "hf download stabilityai/stable-diffusion-3.5-medium" in status["sd35-medium"]
    assert seen == [f"Stable Diffusion 3.5 Medium: not loaded at startup: {status['sd35-medium']}. "
                    f"The app serves the other models."]
    assert bench.availability("sd35-medium") == (False, status["sd35-medium"]) and bench.availability("tiny")[0]
    assert serving.initial_model(bench, {"default": "sd35-medium"}) == "tiny"

    monkeypatch.delenv("LAYERCACHE_DEVICE")  # no GPU here: the registry's own message
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = serving.start(workbench.Workbench(), log=seen.append)
    assert "needs a CUDA GPU" in status["sd35-medium"]


def test_serve_section_is_checked_at_the_boundary(tmp_path, monkeypatch):
    text = space.SPACE_YAML.read_text(encoding="utf-8")
    bad = tmp_path / "space.yaml"
    bad.write_text(text.replace("models: [qwen-image]", "models: [qwen-image, flux-schnell]"), encoding="utf-8")
    with pytest.raises(ValueError, match="'flux-schnell'.*valid keys: qwen-image, flux-dev, sd35-medium"):
        space.serve(bad)
    bad.write_text(text.replace("default: qwen-image", "default: flux-dev"), encoding="utf-8")
    with pytest.raises(ValueError, match="serve.default is 'flux-dev'.*qwen-image, tiny"):
        space.serve(bad)
    bad.write_text(text.replace("qwen-image: 0.8, ", ""), encoding="utf-8")
    with pytest.raises(ValueError, match="step_seconds.*qwen-image"):
        space.serve(bad)
    monkeypatch.setenv("LAYERCACHE_SERVE", "flux-dev,sdxl")
    with pytest.raises(ValueError, match="LAYERCACHE_SERVE names 'sdxl'.*valid keys"):
        serving.served_models()


@pytest.mark.parametrize("key", ["flux-dev", "sd35-medium", "qwen-image"])
def test_preload_fetches_every_diffusers_file_and_no_single_file_checkpoint(hub_cache, key):
    """Every file `save_pretrained` writes for the tiny pipeline (what `from_pretrained` reads) matches the key's
    preload patterns (fnmatch, as huggingface_hub's allow_patterns); the repos' root checkpoints do not."""
    from layercache.models.registry import MODELS

    repo, patterns = space.preload_entry(key).split(" ")
    assert repo == MODELS[key].repo_id
    patterns = patterns.split(",")
    snapshot = next((hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    files = [path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in files), files
    for other in ("flux1-dev.safetensors", "ae.safetensors", "sd3.5_medium.safetensors",
                  "text_encoders/clip_g.safetensors", "README.md"):
        assert not any(fnmatch.fnmatch(other, p) for p in patterns), other


def test_calibrations_persist_under_data_on_a_space(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERCACHE_CACHE_DIR", raising=False)
    monkeypatch.setattr(workbench, "PERSISTENT", tmp_path)
    assert workbench.cache_dir() == tmp_path / "layercache"
    monkeypatch.setattr(workbench, "PERSISTENT", tmp_path / "absent")
    assert workbench.cache_dir() != tmp_path / "absent" / "layercache"
    monkeypatch.setenv("LAYERCACHE_CACHE_DIR", str(tmp_path / "mine"))
    assert workbench.cache_dir() == tmp_path / "mine"
