"""Real diffusers pipeline classes with tiny random components and precomputed prompt embeddings
(DESIGN.md §4), so that LayerCache is tested on their real code paths without downloads."""

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)


def _vae(latent_channels):
    torch.manual_seed(0)
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5)


def flux():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(4), text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    g = torch.Generator().manual_seed(1)
    embeds = {"prompt_embeds": torch.randn(1, 6, 32, generator=g),
              "pooled_prompt_embeds": torch.randn(1, 32, generator=g),
              "negative_prompt_embeds": torch.randn(1, 6, 32, generator=g),
              "negative_pooled_prompt_embeds": torch.randn(1, 32, generator=g),
              "true_cfg_scale": 2.0, "height": 16, "width": 16}
    return pipe, embeds


def sd3(variant="sd3"):
    torch.manual_seed(0)
    extra = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)} if variant == "sd35" else {}
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_layers=3,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=4, **extra)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=_vae(4), text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    g = torch.Generator().manual_seed(1)
    embeds = {"prompt_embeds": torch.randn(1, 6, 32, generator=g),
              "pooled_prompt_embeds": torch.randn(1, 64, generator=g),
              "negative_prompt_embeds": torch.randn(1, 6, 32, generator=g),
              "negative_pooled_prompt_embeds": torch.randn(1, 64, generator=g),
              "guidance_scale": 3.0, "height": 16, "width": 16}
    return pipe, embeds


def qwen():
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                              axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                             tokenizer=None, transformer=transformer)
    g = torch.Generator().manual_seed(1)
    embeds = {"prompt_embeds": torch.randn(1, 6, 32, generator=g),
              "prompt_embeds_mask": torch.ones(1, 6, dtype=torch.long),
              "negative_prompt_embeds": torch.randn(1, 6, 32, generator=g),
              "negative_prompt_embeds_mask": torch.ones(1, 6, dtype=torch.long),
              "true_cfg_scale": 2.0, "height": 32, "width": 32}
    return pipe, embeds


BUILDERS = {"flux": flux, "sd3": sd3, "sd35": lambda: sd3("sd35"), "qwen": qwen}
