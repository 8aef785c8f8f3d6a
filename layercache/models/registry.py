"""The models LayerCache supports, by key: the bundled digit model and the hub models (allow-list).

Only these keys can be loaded by the app and the CLI: no arbitrary paths or repo ids, safetensors only,
never remote code.
"""

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

    @property
    def bundled(self) -> bool:
        return self.repo_id is None


MODELS = {
    "tiny": ModelEntry("tiny", "Bundled digits (Qwen-Image family, 12 blocks, CPU)", None, "TinyDigitPipeline",
                       30, 3.0, "a digit: 7, seven, digit 7"),
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


def availability(key: str) -> tuple[bool, str]:
    """(can it load here, why not)."""
    entry = get_entry(key)
    if entry.bundled:
        return True, "bundled, runs on the CPU"
    if not torch.cuda.is_available():
        return False, f"{entry.label} needs a CUDA GPU (and its weights from the Hugging Face Hub); none here"
    return True, "loads from the Hugging Face Hub on first use"


def load_pipeline(key: str, device: str | None = None):
    entry = get_entry(key)
    ok, reason = availability(key)
    if not ok:
        raise ValueError(reason)
    if entry.bundled:
        from .tiny import TinyDigitPipeline
        return TinyDigitPipeline.from_weights(device=device or "cpu")
    import diffusers
    cls = getattr(diffusers, entry.pipeline_class)
    pipe = cls.from_pretrained(entry.repo_id, torch_dtype=torch.bfloat16, use_safetensors=True)
    return pipe.to(device or "cuda")


def shipped_calibration(key: str, num_steps: int, num_groups: int) -> Path:
    return CALIBRATIONS / f"{key}_steps{num_steps}_groups{num_groups}.npz"
