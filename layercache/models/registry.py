"""The models LayerCache supports, by key: the bundled digit model and the hub models (allow-list).

Only these keys can be loaded by the app and the CLI: no arbitrary paths or repo ids, safetensors only,
never remote code.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CALIBRATIONS = ASSETS / "calibrations"


@dataclass(frozen=True)
class ModelEntry:
    key: str
    label: str
    repo_id: str | None        # None: bundled
    pipeline_class: str
    default_steps: int
    default_guidance: float
    prompt_hint: str
    weights: str | None = None   # bundled models: their folder under assets/

    @property
    def weights_path(self) -> Path:
        return ASSETS / self.weights

    @property
    def bundled(self) -> bool:
        return self.repo_id is None


MODELS = {
    "tiny": ModelEntry("tiny", "Bundled digits (Qwen-Image family, 12 blocks, CPU)", None, "TinyDigitPipeline",
                       30, 3.0, "a digit: 7, seven, digit 7", "tiny"),
    "tiny-flux": ModelEntry("tiny-flux", "Bundled digits (FLUX family, 4 double + 8 single blocks, CPU)", None,
                            "TinyDigitPipeline", 30, 3.0, "a digit: 7, seven, digit 7", "tiny_flux"),
    "qwen-image": ModelEntry("qwen-image", "Qwen-Image (60 blocks)", "Qwen/Qwen-Image", "QwenImagePipeline",
                             50, 4.0, "a text prompt"),
    "flux-dev": ModelEntry("flux-dev", "FLUX.1-dev (19 double + 38 single blocks)", "black-forest-labs/FLUX.1-dev",
                           "FluxPipeline", 50, 3.5, "a text prompt"),
    "sd35-medium": ModelEntry("sd35-medium", "Stable Diffusion 3.5 Medium", "stabilityai/stable-diffusion-3.5-medium",
                              "StableDiffusion3Pipeline", 40, 4.5, "a text prompt"),
}


def get_entry(key: str) -> ModelEntry:
    if key not in MODELS:
        raise ValueError(f"unknown model {key!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[key]


def hub_device() -> str | None:
    """Where hub models run: LAYERCACHE_DEVICE if set ("cpu", "cuda:1", ...), else CUDA where present, else None."""
    return os.environ.get("LAYERCACHE_DEVICE", "").strip() or ("cuda" if torch.cuda.is_available() else None)


def hub_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs (the models' published precision); float32 on the CPU: CPUs without native bf16 (no AVX512-BF16
    or AMX, like this project's 2-core test machine) run bf16 matmuls ~20x slower than float32, and the CPU path is
    for tests and teaching, where exact arithmetic matters more than memory."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def is_cached(repo_id: str) -> bool:
    """Is a snapshot of this repo in the local Hugging Face cache (its model_index.json at least)?"""
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def missing_weights(entry: ModelEntry) -> str:
    """The one message for weights that are not here and cannot be fetched: what is missing, and what to do."""
    return (f"{entry.label}: the weights of {entry.repo_id} are not in the local Hugging Face cache and the Hub is "
            f"offline (HF_HUB_OFFLINE=1). Download them once with `hf download {entry.repo_id}` (gated models: "
            f"accept the licence on huggingface.co/{entry.repo_id} and set HF_TOKEN first), or unset HF_HUB_OFFLINE "
            f"to download on first use")


def availability(key: str) -> tuple[bool, str]:
    """(can it load here, why not / how): a cheap check, no weights touched."""
    from huggingface_hub import is_offline_mode

    entry = get_entry(key)
    if entry.bundled:
        return True, "bundled, runs on the CPU"
    device = hub_device()
    if device is None:
        return False, (f"{entry.label} needs a CUDA GPU (and its weights from the Hugging Face Hub); none here. "
                       f"Set LAYERCACHE_DEVICE=cpu to run it on the CPU (very slow at full size)")
    try:
        on_cpu = torch.device(device).type == "cpu"
    except RuntimeError:
        return False, f"LAYERCACHE_DEVICE={device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    cached = is_cached(entry.repo_id)
    if not cached and is_offline_mode():
        return False, missing_weights(entry)
    where = ("on the CPU (LAYERCACHE_DEVICE=cpu, float32): slow, minutes per step at full size" if on_cpu
             else f"on {device} in bf16")
    source = "weights in the local Hugging Face cache" if cached else "weights download from the Hub on first use"
    return True, f"runs {where}; {source}"


def load_pipeline(key: str, device: str | None = None):
    entry = get_entry(key)
    ok, reason = availability(key)
    if not ok:
        raise ValueError(reason)
    if entry.bundled:
        from .tiny import TinyDigitPipeline
        return TinyDigitPipeline.from_weights(entry.weights_path, device=device or "cpu")
    import diffusers
    from huggingface_hub import is_offline_mode

    device = device or hub_device()
    cls = getattr(diffusers, entry.pipeline_class)
    try:
        pipe = cls.from_pretrained(entry.repo_id, dtype=hub_dtype(device), use_safetensors=True)
    except OSError as err:  # diffusers' "not fully cached" / huggingface_hub's HTTP and gated-repo errors
        if is_offline_mode():  # a partial snapshot: model_index.json is here, some component is not
            raise ValueError(missing_weights(entry)) from err
        raise ValueError(f"{entry.label}: cannot load {entry.repo_id} from the Hugging Face Hub ({err}). Check the "
                         f"network; gated models: accept the licence on huggingface.co/{entry.repo_id} and set "
                         f"HF_TOKEN") from err
    return pipe.to(device)


def pipeline_call(key: str, prompt: str, guidance: float) -> dict:
    """The pipeline arguments for a prompt at the app's guidance: Qwen-Image is not guidance-distilled and runs
    classifier-free guidance only with a negative prompt (its model card's " " and true_cfg_scale); the others
    take guidance_scale (FLUX.1-dev: the distilled guidance; SD3.5: CFG; the bundled model: CFG)."""
    if key == "qwen-image":
        return {"prompt": prompt, "negative_prompt": " ", "true_cfg_scale": float(guidance)}
    return {"prompt": prompt, "guidance_scale": float(guidance)}


def shipped_calibration(key: str, num_steps: int, num_groups: int) -> Path:
    return CALIBRATIONS / f"{key}_steps{num_steps}_groups{num_groups}.npz"
