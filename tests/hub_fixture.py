"""Tiny random FLUX.1-dev, SD3.5 Medium and Qwen-Image pipelines, complete with text encoders and tokenizers, written
into a Hugging Face cache under the real repo ids, so that the app's loader is tested by repo id with the Hub offline.

Everything is built here, offline: transformers' tokenizers take a vocabulary directly (a letter vocabulary for CLIP
and T5, the 256 byte symbols for Qwen2's byte-level BPE), the models are random at widths of 16-32. Only the
pipelines' code paths are real; the images are noise.
"""

import hashlib
import string
from pathlib import Path

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
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

LETTERS = string.ascii_lowercase + string.digits
# the pipelines' default image is 1024 px (Flux, Qwen-Image: a hard-coded 128 latent pixels); tests set this instead
SAMPLE_SIZE = 16


def clip_tokenizer():
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:  # CLIP's BPE marks a word's last symbol with </w>
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in LETTERS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def qwen_tokenizer():
    tokenizer = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(sorted(ByteLevel.alphabet()))}, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})  # the prompt template
    return tokenizer


def clip(tokenizer, hidden, projection=None):
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5(tokenizer, width=32):
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_ff=2 * width, d_kv=8, num_heads=4,
                                   num_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def kl_vae():
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.06, scaling_factor=1.5)


def flux():
    torch.manual_seed(0)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                        vae=kl_vae(), text_encoder=clip(tok, 32), tokenizer=tok, text_encoder_2=t5(tok2),
                        tokenizer_2=tok2, transformer=transformer)


def sd35():
    torch.manual_seed(0)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=SAMPLE_SIZE, patch_size=2, in_channels=4, num_layers=3,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                        qk_norm="rms_norm", dual_attention_layers=(0,))
    # the two CLIPs' hidden states are concatenated (16 + 16, padded to T5's 32), their projections too (32 + 32)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=kl_vae(), text_encoder=clip(tok, 16, 32), tokenizer=tok,
                                    text_encoder_2=clip(tok, 16, 32), tokenizer_2=clip_tokenizer(),
                                    text_encoder_3=t5(tok3), tokenizer_3=tok3)


def qwen_image():
    torch.manual_seed(0)
    tok = qwen_tokenizer()
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=len(tok), bos_token_id=None,
                         eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0])))
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                              axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                             vae=vae, text_encoder=text_encoder, tokenizer=tok, transformer=transformer)


BUILDERS = {"black-forest-labs/FLUX.1-dev": flux, "stabilityai/stable-diffusion-3.5-medium": sd35,
            "Qwen/Qwen-Image": qwen_image}


def write_hub_cache(hub_cache: Path, repos=tuple(BUILDERS)) -> Path:
    """Save each pipeline where `huggingface_hub` looks for a downloaded snapshot: <cache>/models--org--name/
    snapshots/<commit>/ and refs/main naming that commit (plain files; the Hub's blobs/ symlinks are a storage
    detail readers never need)."""
    for repo in repos:
        commit = hashlib.sha1(repo.encode()).hexdigest()  # any 40-hex name; refs/main says which snapshot is current
        folder = hub_cache / f"models--{repo.replace('/', '--')}"
        BUILDERS[repo]().save_pretrained(folder / "snapshots" / commit, safe_serialization=True)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
    return hub_cache
