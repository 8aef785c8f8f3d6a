"""Live previews of the x0 estimate, every step and cheap: no VAE decode until the final image.

The bundled model samples in pixel space, so its x0 is the image. The hub models sample in a VAE's latent
space, 8x smaller per side; their preview is a linear map from the 16 latent channels to RGB, per pixel of the
latent grid, with published coefficients: ComfyUI's `latent_rgb_factors` (comfy/latent_formats.py), fitted for
FLUX.1's VAE (`Flux`), SD3's VAE (`SD3`) and Wan 2.1's VAE (`Wan21`, which ComfyUI also uses for Qwen-Image:
Qwen-Image's VAE is Wan 2.1's with a fine-tuned decoder). They apply to the normalised latents the sampler
works on, which is what diffusers' pipelines hand their callbacks too: (z - shift) * scale for FLUX.1 / SD3,
(z - mean) / std for Qwen-Image. Their output is read as [-1, 1] and shown as (rgb + 1) / 2, clamped (as ComfyUI
shows it).

A latent space without published factors (another channel count, e.g. the tests' 4-channel random VAEs, or
another pipeline family) falls back to its first three channels, each stretched to [0, 1] on its own range
(one channel: grey): it shows where structure forms, not colours. diffusers' `AutoencoderTiny` (TAESD) is not
used: no weights are present here to check its latent convention against.
"""

import numpy as np
import torch

# ComfyUI comfy/latent_formats.py, class Flux: 16 x RGB, and the bias
FLUX = (
    [
        [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
        [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
        [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
    ],
    [-0.0329, -0.0718, -0.0851],
)
# ComfyUI comfy/latent_formats.py, class SD3 (SD3 and SD3.5 share the VAE)
SD3 = (
    [
        [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458], [0.0856, 0.0339, 0.0902],
        [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309], [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358],
        [-0.0194, 0.0020, 0.0669], [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293], [-0.1448, -0.1463, -0.1189],
    ],
    [0.2394, 0.2135, 0.1925],
)
# ComfyUI comfy/latent_formats.py, class Wan21 (ComfyUI's QwenImage model uses this latent format)
WAN21 = (
    [
        [-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747], [0.0372, 0.2344, 0.1420],
        [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665], [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975],
        [-0.0412, 0.0267, -0.1364], [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
        [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950], [0.1984, 0.0913, 0.1861],
    ],
    [-0.1835, -0.0868, -0.3360],
)

# by pipeline family (class name, so that subclasses such as img2img pipelines match through their MRO)
FACTORS = {"FluxPipeline": FLUX, "StableDiffusion3Pipeline": SD3, "QwenImagePipeline": WAN21}


def published_factors(pipe, channels: int):
    """(factors C x 3, bias 3) for this pipeline's latent space, or None where none are published."""
    for cls in type(pipe).__mro__:
        factors = FACTORS.get(cls.__name__)
        if factors is not None:
            return factors if len(factors[0]) == channels else None
    return None


def latent_grid(pipe, latents: torch.Tensor, call: dict | None = None) -> torch.Tensor:
    """The first image's latents as (C, h, w). Flux and Qwen-Image pack 2x2 patches into tokens: undone with
    the pipeline's own `_unpack_latents`, which needs the image size (the call's, else the pipeline's default)."""
    if latents.ndim == 3:
        call, scale = call or {}, pipe.vae_scale_factor
        height = call.get("height") or pipe.default_sample_size * scale
        width = call.get("width") or pipe.default_sample_size * scale
        latents = type(pipe)._unpack_latents(latents[:1], height, width, scale)
    if latents.ndim == 5:  # Qwen-Image's video VAE: (B, C, frames, h, w), one frame
        latents = latents[:, :, 0]
    return latents[0]


def latent_to_rgb(grid: torch.Tensor, factors=None) -> torch.Tensor:
    """(C, h, w) latents -> (h, w, 3) in [0, 1]: the published linear map, or the fallback (see the module)."""
    grid = grid.float()
    if factors is not None:
        weight = torch.tensor(factors[0], device=grid.device)
        bias = torch.tensor(factors[1], device=grid.device)
        rgb = torch.einsum("chw,cr->hwr", grid, weight) + bias
        return ((rgb + 1) / 2).clamp(0, 1)
    channels = grid[[min(c, grid.shape[0] - 1) for c in range(3)]]  # one channel: grey
    low = channels.amin(dim=(1, 2), keepdim=True)
    high = channels.amax(dim=(1, 2), keepdim=True)
    return ((channels - low) / (high - low).clamp_min(1e-6)).permute(1, 2, 0)


def preview_image(pipe, x0: torch.Tensor | None, call: dict | None = None) -> np.ndarray | None:
    """The x0 estimate (as the pipeline's latents are laid out) as an image in [0, 1]: (32, 32) for the bundled
    model, (h, w, 3) at the latent grid's size for the hub models."""
    from ..models.tiny import TinyDigitPipeline
    from ..models.tiny.model import unpack

    if x0 is None:
        return None
    if isinstance(pipe, TinyDigitPipeline):
        return ((unpack(x0[:1].float()) + 1) / 2).clamp(0, 1)[0, 0].cpu().numpy()
    grid = latent_grid(pipe, x0, call)
    return latent_to_rgb(grid, published_factors(pipe, grid.shape[0])).cpu().numpy()
