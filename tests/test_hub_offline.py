"""The hub path end to end without the Hub: tiny random FLUX.1-dev, SD3.5 Medium and Qwen-Image saved under their
real repo ids in a Hugging Face cache (tests/hub_fixture.py), HF_HUB_OFFLINE=1, LAYERCACHE_DEVICE=cpu; the app's own
loader and the app's own `run` / `explore`."""

import importlib
import math

import numpy as np
import pytest
import torch
from hub_fixture import SAMPLE_SIZE

from layercache.calibrate import Calibration
from layercache.models.registry import MODELS, availability, load_pipeline, pipeline_call

HUB = ["flux-dev", "sd35-medium", "qwen-image"]
CONTEXTS = {"flux-dev": ["cond"], "sd35-medium": ["default"], "qwen-image": ["cond", "uncond"]}
CLASSES = {"flux-dev": ("FluxPipeline", ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]),
           "sd35-medium": ("StableDiffusion3Pipeline", ["text_encoder", "text_encoder_2", "text_encoder_3",
                                                        "tokenizer", "tokenizer_2", "tokenizer_3"]),
           "qwen-image": ("QwenImagePipeline", ["text_encoder", "tokenizer"])}


@pytest.mark.parametrize("key", HUB)
def test_loader_loads_each_family_by_repo_id_offline_on_the_cpu(offline_hub, key):
    ok, reason = availability(key)
    assert ok and "CPU" in reason and "local Hugging Face cache" in reason
    pipe = load_pipeline(key)
    cls, parts = CLASSES[key]
    assert type(pipe).__name__ == cls and all(getattr(pipe, part) is not None for part in parts)
    assert pipe.transformer.device.type == "cpu" and pipe.transformer.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    # the prompt goes through the real tokenizers and text encoders, the latents through the real VAE
    images = pipe(**pipeline_call(key, "a red fox", MODELS[key].default_guidance), num_inference_steps=2,
                  height=32, width=32, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_weights_absent_and_offline_is_one_clear_message(offline_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    ok, reason = availability("flux-dev")
    assert not ok and "black-forest-labs/FLUX.1-dev" in reason and "hf download" in reason
    with pytest.raises(ValueError, match="not in the local Hugging Face cache") as err:
        load_pipeline("flux-dev")
    assert str(err.value) == reason
    # a partial download: model_index.json is there, the weights are not; the loader says the same
    snapshot = tmp_path / "models--Qwen--Qwen-Image" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    source = next((offline_hub / "models--Qwen--Qwen-Image" / "snapshots").iterdir()) / "model_index.json"
    (snapshot / "model_index.json").write_text(source.read_text())
    (tmp_path / "models--Qwen--Qwen-Image" / "refs").mkdir()
    (tmp_path / "models--Qwen--Qwen-Image" / "refs" / "main").write_text("0" * 40)
    assert availability("qwen-image")[0]
    with pytest.raises(ValueError, match="Qwen/Qwen-Image.*hf download Qwen/Qwen-Image"):
        load_pipeline("qwen-image")


def test_hub_errors_online_are_one_message_too(offline_hub, tmp_path, monkeypatch):
    """Online, a gated repo without a token (or no network) fails inside from_pretrained with an OSError: the loader
    passes the Hub's words on, with what to do, as ValueError (never contacting the Hub here)."""
    import diffusers
    import huggingface_hub.constants as hub_constants

    def gated(*args, **kwargs):
        raise OSError("401 Client Error: access to model black-forest-labs/FLUX.1-dev is restricted")

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", gated)
    with pytest.raises(ValueError, match="restricted.*set HF_TOKEN"):
        load_pipeline("flux-dev")


def test_without_a_gpu_or_the_cpu_switch_hub_models_say_how(offline_hub, monkeypatch):
    monkeypatch.delenv("LAYERCACHE_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = availability("sd35-medium")
    assert not ok and "CUDA" in reason and "LAYERCACHE_DEVICE=cpu" in reason
    monkeypatch.setenv("LAYERCACHE_DEVICE", "gpu")
    assert availability("sd35-medium") == (False, "LAYERCACHE_DEVICE='gpu' is not a torch device (e.g. cpu, cuda, "
                                                  "cuda:1)")


@pytest.fixture
def app_offline(offline_hub, tmp_path, monkeypatch):
    """The app with a fresh workbench (nothing loaded, calibrations kept under tmp_path), its hub pipelines drawn at
    SAMPLE_SIZE latent pixels instead of the 1024-px default so that a run takes a second."""
    import app
    from layercache.studio import workbench

    monkeypatch.setenv("LAYERCACHE_CACHE_DIR", str(tmp_path))
    # two prompts of different lengths (Qwen-Image's text stream is as long as the prompt) instead of four
    monkeypatch.setattr(workbench, "HUB_CALIBRATION_CALLS", workbench.HUB_CALIBRATION_CALLS[:2])
    threads = torch.get_num_threads()
    app.configure_torch()  # as the app runs on a CPU: one thread
    bench = workbench.Workbench()
    runner = bench.runner

    def small_runner(key):
        found = runner(key)
        for pipe in found.pipes.values():
            pipe.default_sample_size = SAMPLE_SIZE
        return found

    monkeypatch.setattr(bench, "runner", small_runner)
    monkeypatch.setattr(app, "bench", bench)
    yield app
    torch.set_num_threads(threads)


class Progress:
    def __init__(self):
        self.seen = []

    def __call__(self, fraction, desc=None, **kwargs):
        self.seen.append((fraction, desc))


STEPS, GROUPS = 4, 2


def run_app(app, key):
    """The app's `run` generator, called as Gradio calls it; each update as {output name: value}."""
    progress = Progress()
    # model, prompt, seed, steps, guidance, budget, groups, max_k, method, threshold
    updates = app.run(key, "a red fox", 3, STEPS, MODELS[key].default_guidance, 0.5, GROUPS, 2, "LayerCache", 0.1,
                      progress=progress)
    return [dict(zip(app.OUTPUTS, update)) for update in updates], progress


@pytest.mark.parametrize("key", HUB)
def test_the_app_runs_each_hub_model_calibrates_once_and_explores(app_offline, key, monkeypatch):
    from layercache.studio import workbench

    calibrate_module = importlib.import_module("layercache.calibrate")  # the package's `calibrate` is the function
    calibrations, real = [], calibrate_module.calibrate
    monkeypatch.setattr(calibrate_module, "calibrate", lambda *a, **k: calibrations.append(a) or real(*a, **k))

    outputs, progress = run_app(app_offline, key)
    steps = [out for out in outputs if out["status"].startswith("**Step ")]
    assert len(steps) == STEPS and len(outputs) == STEPS + 1
    for out in steps:  # every step: both lanes' previews (the latent-to-RGB map) and the three heatmaps
        assert all(isinstance(out[lane], np.ndarray) and out[lane].ndim == 3 for lane in ("uncached", "cached"))
        assert all(out[name] is not None for name in app_offline.OUTPUTS if name.startswith("heat_"))
    final = outputs[-1]
    assert final["status"].startswith("**Done")
    metrics = final["metrics_json"]
    assert all(metrics[m] is not None for m in ("psnr_db", "ssim", "wall_speedup", "compute_speedup"))
    assert metrics["compute_speedup"] > 1 and (math.isinf(metrics["psnr_db"]) or metrics["psnr_db"] > 0)
    for name in ("uncached", "cached", "diff"):  # the final images through the real VAE
        assert isinstance(final[name], np.ndarray), name
    assert final["calibration"].startswith("calibrated now") and len(calibrations) == 1
    assert any(desc == "calibrating" for _, desc in progress.seen)
    stored = Calibration.load(workbench.cache_dir() / f"{key}_steps{STEPS}_groups{GROUPS}.npz")
    # the guidance reached each pipeline its own way: Qwen-Image's true CFG runs both branches, SD3's is batched
    assert stored.meta["contexts"] == CONTEXTS[key] and stored.meta["trajectories"] == 2 * (1 + (key != "flux-dev"))

    # the calibration forgotten as by a restart (the checked plan kept, to save time): it is found on disk
    monkeypatch.setattr(app_offline.bench, "_calibrations", {})
    outputs, progress = run_app(app_offline, key)
    assert outputs[-1]["status"].startswith("**Done") and outputs[-1]["calibration"].startswith("cached")
    assert len(calibrations) == 1 and not any(desc == "calibrating" for _, desc in progress.seen)

    velocity, stability, note = app_offline.explore(key, "a lighthouse", 5, STEPS, GROUPS, 2,
                                                    MODELS[key].default_guidance, progress=Progress())
    assert "heterogeneity ratio" in note.lower() and velocity is not None and stability is not None


def test_the_app_shows_missing_weights_and_keeps_serving(app_offline, offline_hub, tmp_path, monkeypatch):
    import gradio as gr
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(gr.Error, match="hf download stabilityai/stable-diffusion-3.5-medium"):
        run_app(app_offline, "sd35-medium")
    with pytest.raises(gr.Error, match="not in the local Hugging Face cache"):
        app_offline.explore("sd35-medium", "a fox", 0, STEPS, GROUPS, 2, 4.5, progress=Progress())
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(offline_hub))  # the weights arrive: the next run works
    assert run_app(app_offline, "sd35-medium")[0][-1]["status"].startswith("**Done")
