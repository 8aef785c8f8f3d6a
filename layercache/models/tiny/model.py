"""The bundled model: a scaled-down Qwen-Image transformer on 32x32 digits, and its label encoder.

The transformer is diffusers' own `QwenImageTransformer2DModel` (the family of the paper's benchmark
model) at 12 dual-stream blocks; it works in pixel space, packing 4x4 patches into 64 tokens. The label
encoder turns a digit label (or the null label used for classifier-free guidance) into the text-stream
tokens that the transformer's `txt_in` projection reads.

`build_transformer` also builds the candidate architectures of `python -m layercache train` (issue 12,
docs/candidates.md): the FLUX family (`FluxTransformer2DModel`: double-stream blocks, then single-stream
ones) and the SD3 family (`SD3Transformer2DModel`), at any depth, width and patch size. Whatever the model's
own patch size, the pipeline's latents are the 32x32 image in 4x4-patch tokens (`pack`); `velocity` converts.
"""

import torch
from diffusers import FluxTransformer2DModel, ModelMixin, QwenImageTransformer2DModel, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

IMAGE_SIZE = 32
PATCH = 4
GRID = IMAGE_SIZE // PATCH  # 8x8 = 64 image tokens
NULL_LABEL = 10
TEXT_DIM = 64  # width of the label encoder's tokens (the transformer's joint_attention_dim)

TRANSFORMER_CONFIG = dict(
    patch_size=PATCH,
    in_channels=PATCH * PATCH,  # one grayscale channel per pixel of a 4x4 patch
    out_channels=1,
    num_layers=12,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=TEXT_DIM,
    axes_dims_rope=(8, 12, 12),
)

FAMILIES = {"qwen": QwenImageTransformer2DModel, "flux": FluxTransformer2DModel, "sd3": SD3Transformer2DModel}


class DigitLabelEncoder(ModelMixin, ConfigMixin):
    """Maps labels 0-9 (and 10, the null label) to `num_tokens` text-stream tokens."""

    @register_to_config
    def __init__(self, num_labels: int = 11, num_tokens: int = 4, dim: int = TEXT_DIM):
        super().__init__()
        self.embedding = torch.nn.Embedding(num_labels, num_tokens * dim)
        torch.nn.init.normal_(self.embedding.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        tokens = self.embedding(labels)
        return tokens.view(labels.shape[0], self.config.num_tokens, self.config.dim)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE split of a head over (frame, row, column), even sizes summing to head_dim: 32 -> (8, 12, 12)."""
    frame = head_dim // 4 // 2 * 2
    row = (head_dim - frame) // 2 // 2 * 2
    return frame, row, head_dim - frame - row


def build_transformer(family: str = "qwen", layers: int = 12, single_layers: int = 0, head_dim: int = 32,
                      heads: int = 4, patch: int = PATCH):
    """The bundled model's transformer at the defaults; a candidate architecture otherwise. `layers`: Qwen's
    and SD3's blocks, FLUX's double-stream blocks; `single_layers`: FLUX's single-stream blocks."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if IMAGE_SIZE % patch or (single_layers and family != "flux"):
        raise ValueError(f"patch must divide {IMAGE_SIZE} and single layers need the flux family")
    if family == "qwen":
        return QwenImageTransformer2DModel(patch_size=patch, in_channels=patch * patch, out_channels=1,
                                           num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                           joint_attention_dim=TEXT_DIM, axes_dims_rope=rope_axes(head_dim))
    if family == "flux":  # patch_size 1 on tokens we pack ourselves, as FluxPipeline does
        return FluxTransformer2DModel(patch_size=1, in_channels=patch * patch, num_layers=layers,
                                      num_single_layers=single_layers, attention_head_dim=head_dim,
                                      num_attention_heads=heads, joint_attention_dim=TEXT_DIM,
                                      pooled_projection_dim=TEXT_DIM, axes_dims_rope=rope_axes(head_dim))
    return SD3Transformer2DModel(sample_size=IMAGE_SIZE, patch_size=patch, in_channels=1, out_channels=1,
                                 num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                 joint_attention_dim=TEXT_DIM, caption_projection_dim=head_dim * heads,
                                 pooled_projection_dim=TEXT_DIM, pos_embed_max_size=IMAGE_SIZE // patch)


def patch_of(transformer) -> int:
    config = transformer.config
    return round(config.in_channels ** 0.5) if isinstance(transformer, FluxTransformer2DModel) else config.patch_size


def pack(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(B, 1, 32, 32) images -> (B, (32/patch)^2, patch^2) patch tokens, row-major over the grid."""
    b, grid = images.shape[0], IMAGE_SIZE // patch
    x = images.reshape(b, 1, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, grid * grid, patch * patch)


def unpack(tokens: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Inverse of `pack`."""
    b, grid = tokens.shape[0], IMAGE_SIZE // patch
    x = tokens.reshape(b, grid, grid, 1, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 1, IMAGE_SIZE, IMAGE_SIZE)


def img_shapes(batch_size: int, patch: int = PATCH) -> list:
    return [[(1, IMAGE_SIZE // patch, IMAGE_SIZE // patch)]] * batch_size


def velocity(transformer, latents: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The transformer's velocity on the pipeline's latents (B, 64, 16) at sigma (B,), each family called with
    its own conventions (timestep = sigma for Qwen and FLUX, which scales it itself; sigma * 1000 for SD3)."""
    b, patch = latents.shape[0], patch_of(transformer)
    if isinstance(transformer, SD3Transformer2DModel):
        out = transformer(hidden_states=unpack(latents), timestep=sigma * 1000, encoder_hidden_states=tokens,
                          pooled_projections=tokens.mean(1), return_dict=False)[0]
        return pack(out)
    x = latents if patch == PATCH else pack(unpack(latents), patch)
    if isinstance(transformer, FluxTransformer2DModel):
        grid = IMAGE_SIZE // patch
        rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(x)
        txt_ids = torch.zeros(tokens.shape[1], 3).to(x)
        out = transformer(hidden_states=x, timestep=sigma, encoder_hidden_states=tokens,
                          pooled_projections=tokens.mean(1), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
    else:
        out = transformer(hidden_states=x, timestep=sigma, encoder_hidden_states=tokens,
                          img_shapes=img_shapes(b, patch), return_dict=False)[0]
    return out if patch == PATCH else pack(unpack(out, patch))
