"""Live previews of latent-space models: the hub pipelines' latent layouts undone, published latent-to-RGB maps
for 16-channel FLUX.1 / SD3 / Qwen-Image latents, the fallback for any other latent space."""

import numpy as np
import pytest
import tiny_pipelines
import torch
from diffusers import FluxPipeline, QwenImagePipeline

from layercache.studio import preview


@pytest.fixture(scope="module")
def pipes():
    return {name: tiny_pipelines.BUILDERS[name]()[0] for name in ("flux", "sd35", "qwen")}


@pytest.mark.parametrize("name", ["flux", "qwen"])
def test_packed_tokens_unpack_to_the_latent_grid(pipes, name):
    pipe = pipes[name]
    pack = {"flux": FluxPipeline, "qwen": QwenImagePipeline}[name]._pack_latents
    grid = torch.randn(1, 16, 6, 10)  # any channel count, a non-square image
    scale = pipe.vae_scale_factor
    packed = pack(grid, 1, 16, 6, 10)
    assert packed.shape == (1, 15, 64)
    assert torch.equal(preview.latent_grid(pipe, packed, {"height": 6 * scale, "width": 10 * scale}), grid[0])


def test_published_factors_by_pipeline_family_and_channel_count(pipes):
    assert preview.published_factors(pipes["flux"], 16) is preview.FLUX
    assert preview.published_factors(pipes["sd35"], 16) is preview.SD3
    assert preview.published_factors(pipes["qwen"], 16) is preview.WAN21
    assert all(preview.published_factors(pipe, 4) is None for pipe in pipes.values())  # the tests' tiny VAEs
    for factors, bias in (preview.FLUX, preview.SD3, preview.WAN21):
        assert np.shape(factors) == (16, 3) and np.shape(bias) == (3,)


def test_the_linear_map():
    factors, bias = preview.FLUX
    zero = preview.latent_to_rgb(torch.zeros(16, 2, 3), preview.FLUX)
    assert zero.shape == (2, 3, 3) and torch.allclose(zero, (torch.tensor(bias) + 1) / 2)  # the bias alone
    one_channel = torch.zeros(16, 1, 1)
    one_channel[4] = 2.0
    expected = ((2 * torch.tensor(factors[4]) + torch.tensor(bias) + 1) / 2).clamp(0, 1)
    assert torch.allclose(preview.latent_to_rgb(one_channel, preview.FLUX)[0, 0], expected)
    assert preview.latent_to_rgb(100 * torch.ones(16, 4, 4), preview.FLUX).max() == 1.0  # clamped


def test_fallback_stretches_the_first_three_channels():
    grid = torch.randn(4, 5, 7) * 10 + 3
    image = preview.latent_to_rgb(grid)
    assert image.shape == (5, 7, 3)
    for c in range(3):
        assert image[..., c].min() == 0 and image[..., c].max() == 1
    grey = preview.latent_to_rgb(grid[:1])
    assert torch.equal(grey[..., 0], grey[..., 1]) and torch.equal(grey[..., 0], grey[..., 2])
    assert torch.isfinite(preview.latent_to_rgb(torch.ones(4, 3, 3))).all()  # a flat latent does not divide by 0
