"""The bundled model and its pipeline: loading, determinism, outputs, CFG cache contexts, bad input."""

import shutil

import pytest
import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook, StateManager

from layercache.models.tiny import TinyDigitPipeline, parse_prompt
from layercache.models.tiny.pipeline import DEFAULT_WEIGHTS

STEPS = 4  # enough to exercise the loop; quality is measured by `python -m layercache fidelity`


@pytest.fixture(scope="module")
def pipe():
    return TinyDigitPipeline.from_weights()


def run(pipe, seed=0, **kwargs):
    kwargs = {"label": [3, 7], "num_inference_steps": STEPS, "output_type": "pt", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_loads_the_bundled_model(pipe):
    assert len(pipe.transformer.transformer_blocks) == 12
    assert not pipe.transformer.training


def test_same_seed_same_tensor_and_other_seed_differs(pipe):
    first = run(pipe, seed=0)
    assert torch.equal(first, run(pipe, seed=0))
    assert not torch.equal(first, run(pipe, seed=1))


def test_output_shape_and_range(pipe):
    images = run(pipe)
    assert images.shape == (2, 1, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    pil = pipe(prompt="seven", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (32, 32) and pil[0].mode == "L"


def test_prompt_and_label_give_the_same_image(pipe):
    assert torch.equal(run(pipe, label=None, prompt=["digit 3", "seven"]), run(pipe))


class _ContextRecorder(ModelHook):
    """A stateful hook, as real caches are: diffusers keys its state by the active cache context."""

    _is_stateful = True

    class State:
        def __init__(self):
            self.calls = 0

        def reset(self):
            self.calls = 0

    def __init__(self):
        super().__init__()
        self.state_manager = StateManager(self.State)
        self.seen = []  # (context name, that context's call count), survives the pipeline's end-of-call reset

    def reset_state(self, module):  # the pipeline resets stateful hooks at the end of every call
        self.state_manager.reset()
        return module

    def new_forward(self, module, *args, **kwargs):
        state = self.state_manager.get_state()
        state.calls += 1
        self.seen.append((self.state_manager.context.name, state.calls))
        return self.fn_ref.original_forward(*args, **kwargs)


@pytest.mark.parametrize("guidance, expected", [
    (3.0, [("cond", i // 2 + 1) if i % 2 == 0 else ("uncond", i // 2 + 1) for i in range(2 * STEPS)]),
    (1.0, [("cond", i + 1) for i in range(STEPS)]),  # guidance 1 is plain conditional sampling
])
def test_cfg_branches_run_in_separate_cache_contexts(pipe, guidance, expected):
    block = pipe.transformer.transformer_blocks[0]
    recorder = _ContextRecorder()
    HookRegistry.check_if_exists_or_initialize(block).register_hook(recorder, "recorder")
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).invalidate_child_registries_cache()
    try:
        run(pipe, guidance_scale=guidance)
    finally:
        block._diffusers_hook.remove_hook("recorder")
        pipe.transformer._diffusers_hook.invalidate_child_registries_cache()
    assert recorder.seen == expected


@pytest.mark.parametrize("prompt, label", [
    ("7", 7), ("seven", 7), ("digit 7", 7), ("a handwritten Seven", 7), ("number 0", 0), (" nine ", 9), (4, 4),
])
def test_parse_prompt(prompt, label):
    assert parse_prompt(prompt) == label


@pytest.mark.parametrize("prompt", ["", "   ", "eleven", "12", "seven eight", "cat", None, 10, -1])
def test_parse_prompt_rejects(prompt):
    with pytest.raises(ValueError, match="digit|prompt"):
        parse_prompt(prompt)


@pytest.mark.parametrize("kwargs, message", [
    ({"label": 10}, "label must be a digit 0-9, got 10"),
    ({"label": -1}, "label must be a digit 0-9, got -1"),
    ({"label": "7"}, "label must be an integer"),
    ({"label": True}, "label must be an integer"),
    ({"label": []}, "empty"),
    ({"label": None, "prompt": "eleven"}, "cannot read one digit"),
    ({"label": None, "prompt": ""}, "prompt is empty"),
    ({"label": None}, "exactly one of"),
    ({"prompt": "seven"}, "exactly one of"),
    ({"num_inference_steps": 0}, "num_inference_steps must be an integer from 1 to 1000, got 0"),
    ({"num_inference_steps": 1001}, "from 1 to 1000, got 1001"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be an integer"),
    ({"guidance_scale": -0.5}, "guidance_scale must be a number >= 0, got -0.5"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a number >= 0"),
    ({"output_type": "jpeg"}, "output_type"),
])
def test_bad_input_raises_a_clear_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run(pipe, **kwargs)


def test_missing_weights_say_not_found(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        TinyDigitPipeline.from_weights(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not found"):
        TinyDigitPipeline.from_weights(tmp_path / "empty")


@pytest.mark.parametrize("victim", [
    "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
    "label_encoder/diffusion_pytorch_model.safetensors",
    "transformer/config.json",
])
def test_corrupt_weights_raise_value_error(tmp_path, victim):
    weights = tmp_path / "tiny"
    shutil.copytree(DEFAULT_WEIGHTS, weights)
    (weights / victim).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not a safetensors file")
    with pytest.raises(ValueError, match="missing or corrupt"):
        TinyDigitPipeline.from_weights(weights)


def test_missing_shard_raises_value_error(tmp_path):
    weights = tmp_path / "tiny"
    shutil.copytree(DEFAULT_WEIGHTS, weights)
    (weights / "transformer/diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match="missing or corrupt"):
        TinyDigitPipeline.from_weights(weights)


@pytest.mark.parametrize("architecture", [dict(family="flux", layers=1, single_layers=2), dict(family="sd3", layers=2),
                                          dict(layers=2, patch=8)])
def test_candidate_architectures_load_run_and_calibrate(tmp_path, architecture):
    """Issue 12's candidates: each family is saved, loaded by the pipeline, runs with CFG and calibrates."""
    from layercache.calibrate import calibrate
    from layercache.models.tiny.model import DigitLabelEncoder, build_transformer

    torch.manual_seed(0)
    build_transformer(head_dim=16, heads=2, **architecture).save_pretrained(tmp_path / "transformer")
    DigitLabelEncoder(num_tokens=2).save_pretrained(tmp_path / "label_encoder")
    candidate = TinyDigitPipeline.from_weights(tmp_path)
    images = run(candidate, num_inference_steps=3, guidance_scale=3.0)
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    cal = calibrate(candidate, [{"label": [3, 5], "seed": 1}], 4, num_groups=2)
    assert cal.num_blocks == architecture["layers"] + architecture.get("single_layers", 0)


def test_default_architecture_is_the_bundled_model(pipe):
    from layercache.groups import model_id
    from layercache.models.tiny.model import build_transformer

    assert model_id(build_transformer()) == model_id(pipe.transformer)  # the shipped calibrations stay valid


@pytest.mark.parametrize("key, family, blocks", [("tiny", "QwenImageTransformer2DModel", 12),
                                                 ("tiny-flux", "FluxTransformer2DModel", 12)])
def test_each_bundled_model_loads_by_key_and_draws_recognisable_digits(key, family, blocks):
    """Both bundled models (two architectures) load from the registry and pass a fidelity smoke test: one digit
    of each class at 30 steps, judged by the independent classifier (the full figure: `python -m layercache
    fidelity`, in the README)."""
    from layercache.evaluation.fidelity import run_fidelity
    from layercache.groups import find_blocks
    from layercache.models.registry import load_pipeline, shipped_calibration

    model = load_pipeline(key)
    assert type(model.transformer).__name__ == family and len(find_blocks(model.transformer)) == blocks
    figures = run_fidelity(model, per_class=1, steps=30, log=lambda line: None)
    assert figures["generated_accuracy"] >= 0.9, figures["per_class_accuracy"]
    assert shipped_calibration(key, 30, 4).is_file()
