"""`TinyDigitPipeline`: a diffusers pipeline around the bundled digit model.

It follows `QwenImagePipeline`'s conventions so that caches attach to it exactly as they attach to the
real pipelines: a `FlowMatchEulerDiscreteScheduler` with sigmas linspace(1, 1/N, N), timestep = sigma,
and each classifier-free-guidance branch a separate transformer call inside
`transformer.cache_context("cond")` / `("uncond")`.
"""

import json
import re
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

from .defaults import DEFAULT_GUIDANCE, DEFAULT_WEIGHTS  # noqa: F401 - re-exported
from .model import FAMILIES, IMAGE_SIZE, NULL_LABEL, DigitLabelEncoder, pack, unpack, velocity

MAX_STEPS = 1000

_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_FILLER = {"digit", "number", "a", "an", "the", "of", "draw", "write", "handwritten"}


def parse_prompt(prompt) -> int:
    """'7', 'seven', 'digit 7', 'a handwritten seven' -> 7. Raises ValueError on anything else."""
    if isinstance(prompt, (int, np.integer)) and not isinstance(prompt, bool):
        return check_label(int(prompt))
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty: write a digit such as '7', 'seven' or 'digit 7'")
    words = [w for w in re.findall(r"[a-z0-9]+", prompt.lower()) if w not in _FILLER]
    labels = [int(w) if w.isdigit() else _WORDS.index(w) for w in words if w.isdigit() or w in _WORDS]
    if len(words) != 1 or len(labels) != 1:
        raise ValueError(
            f"cannot read one digit 0-9 from prompt {prompt!r}: write e.g. '7', 'seven' or 'digit 7'"
        )
    return check_label(labels[0])


def check_label(label: int) -> int:
    if not 0 <= label <= 9:
        raise ValueError(f"label must be a digit 0-9, got {label}")
    return label


class TinyDigitPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "label_encoder->transformer"
    _callback_tensor_inputs = ["latents", "noise_pred"]

    def __init__(self, transformer, label_encoder: DigitLabelEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, label_encoder=label_encoder, scheduler=scheduler)

    @classmethod
    def from_weights(cls, path=DEFAULT_WEIGHTS, device="cpu") -> "TinyDigitPipeline":
        """Loads the bundled weights (safetensors only), with a clear error if they are missing or corrupt."""
        path = Path(path)
        for sub in ("transformer", "label_encoder"):  # else diffusers takes the path for a Hub repo id
            if not (path / sub / "config.json").is_file():
                raise ValueError(f"model weights not found: {path / sub / 'config.json'} does not exist; restore "
                                 f"assets/ from git or retrain with `python -m layercache train`")
        try:  # the transformer's class from its config, among the families of model.FAMILIES only
            name = json.loads((path / "transformer" / "config.json").read_text())["_class_name"]
            classes = {cls.__name__: cls for cls in FAMILIES.values()}
            if name not in classes:
                raise ValueError(f"unsupported transformer class {name}")
            transformer = classes[name].from_pretrained(path / "transformer", use_safetensors=True)
            label_encoder = DigitLabelEncoder.from_pretrained(path / "label_encoder", use_safetensors=True)
        except Exception as err:  # diffusers raises OSError, ValueError, SafetensorError... depending on the damage
            raise ValueError(
                f"the bundled model weights in {path} are missing or corrupt ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); restore assets/ from git or retrain with "
                f"`python -m layercache train`"
            ) from None
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        pipe = cls(transformer=transformer.eval(), label_encoder=label_encoder.eval(), scheduler=scheduler)
        return pipe.to(device)

    @staticmethod
    def check_inputs(prompt, label, num_inference_steps, guidance_scale, generator) -> list[int]:
        if (prompt is None) == (label is None):
            raise ValueError("give exactly one of `prompt` (e.g. 'seven') or `label` (0-9)")
        items = prompt if prompt is not None else label
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        if not items:
            raise ValueError("the prompt/label list is empty")
        if label is not None:
            for item in items:
                if not isinstance(item, (int, np.integer)) or isinstance(item, bool):
                    raise ValueError(f"label must be an integer 0-9, got {item!r}")
        labels = [parse_prompt(item) for item in items]
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or not 1 <= num_inference_steps <= MAX_STEPS:
            raise ValueError(f"num_inference_steps must be an integer from 1 to {MAX_STEPS}, "
                             f"got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        if generator is not None and not isinstance(generator, (torch.Generator, list)):
            raise ValueError("generator must be a torch.Generator (or a list of them)")
        return labels

    def _velocity(self, latents, sigma, tokens, context: str) -> torch.Tensor:
        if context is None or not hasattr(self.transformer, "cache_context"):  # SD3 sets none, as its pipeline
            return velocity(self.transformer, latents, sigma.expand(latents.shape[0]).to(latents.dtype), tokens)
        with self.transformer.cache_context(context):
            return velocity(self.transformer, latents, sigma.expand(latents.shape[0]).to(latents.dtype), tokens)

    @torch.no_grad()
    def __call__(self, prompt=None, label=None, num_inference_steps: int = 50,
                 guidance_scale: float = DEFAULT_GUIDANCE, generator=None, latents=None,
                 output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)):
        labels = self.check_inputs(prompt, label, num_inference_steps, guidance_scale, generator)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        device, dtype = self._execution_device, self.transformer.dtype
        batch = len(labels)

        label_ids = torch.tensor(labels, device=device)
        cond = self.label_encoder(label_ids).to(dtype)
        uncond = self.label_encoder(torch.full_like(label_ids, NULL_LABEL)).to(dtype)
        do_cfg = guidance_scale != 1.0

        if latents is None:
            noise = torch.randn((batch, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator, dtype=torch.float32)
            latents = pack(noise).to(device=device, dtype=dtype)
        sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)

        for i, t in enumerate(self.scheduler.timesteps):
            sigma = t / 1000
            if do_cfg and not hasattr(self.transformer, "cache_context"):  # SD3: both branches in one call
                noise_uncond, noise_pred = self._velocity(latents.repeat(2, 1, 1), sigma, torch.cat([uncond, cond]),
                                                          None).chunk(2)
            else:
                noise_pred = self._velocity(latents, sigma, cond, "cond")
                noise_uncond = self._velocity(latents, sigma, uncond, "uncond") if do_cfg else None
            if do_cfg:
                noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                local = {"latents": latents, "noise_pred": noise_pred}
                outputs = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                latents = (outputs or {}).get("latents", latents)

        if output_type == "latent":
            images = latents
        else:
            images = ((unpack(latents.float()) + 1) / 2).clamp(0, 1)
            if output_type in ("np", "pil"):
                images = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                images = [Image.fromarray((im[..., 0] * 255).round().astype(np.uint8), mode="L") for im in images]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
