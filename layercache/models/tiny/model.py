"""The bundled model: a scaled-down Qwen-Image transformer on 32x32 digits, and its label encoder.

The transformer is diffusers' own `QwenImageTransformer2DModel` (the family of the paper's benchmark
model) at 12 dual-stream blocks; it works in pixel space, packing 4x4 patches into 64 tokens. The label
encoder turns a digit label (or the null label used for classifier-free guidance) into the text-stream
tokens that the transformer's `txt_in` projection reads.
"""

import torch
from diffusers import ModelMixin, QwenImageTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config

IMAGE_SIZE = 32
PATCH = 4
GRID = IMAGE_SIZE // PATCH  # 8x8 = 64 image tokens
NULL_LABEL = 10

TRANSFORMER_CONFIG = dict(
    patch_size=PATCH,
    in_channels=PATCH * PATCH,  # one grayscale channel per pixel of a 4x4 patch
    out_channels=1,
    num_layers=12,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    axes_dims_rope=(8, 12, 12),
)


class DigitLabelEncoder(ModelMixin, ConfigMixin):
    """Maps labels 0-9 (and 10, the null label) to `num_tokens` text-stream tokens."""

    @register_to_config
    def __init__(self, num_labels: int = 11, num_tokens: int = 4, dim: int = 64):
        super().__init__()
        self.embedding = torch.nn.Embedding(num_labels, num_tokens * dim)
        torch.nn.init.normal_(self.embedding.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        tokens = self.embedding(labels)
        return tokens.view(labels.shape[0], self.config.num_tokens, self.config.dim)


def build_transformer() -> QwenImageTransformer2DModel:
    return QwenImageTransformer2DModel(**TRANSFORMER_CONFIG)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, 32, 32) images -> (B, 64, 16) patch tokens, row-major over the 8x8 grid."""
    b = images.shape[0]
    x = images.reshape(b, 1, GRID, PATCH, GRID, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, GRID * GRID, PATCH * PATCH)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, GRID, GRID, 1, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 1, IMAGE_SIZE, IMAGE_SIZE)


def img_shapes(batch_size: int) -> list:
    return [[(1, GRID, GRID)]] * batch_size
