"""How much GPU memory the app needs for each hub model, and which cards run it: no download, no GPU.

    python -m layercache memory [--groups 4] [--max-k 4] [--resolution 1024]

Every component of Qwen-Image, FLUX.1-dev and SD3.5 Medium (transformer, text encoders, VAE) is built at its
published configuration (the values of each repo's config.json, written out below) on PyTorch's meta device:
shapes only, no memory. Bytes are what the checkpoint holds (parameters and persistent buffers) at 2 bytes each
(bf16, the app's GPU dtype).

The cache's bound is what LayerCache's hooks keep (`hooks.LayerCacheState`): per cache context, per group, the last
K computed residuals of both streams, each a (batch, tokens, width) tensor in the model's dtype. `measured_cache_bytes`
reads the same off a live run's states (a test checks one against the other).

The app's peak assumes both lanes share one set of weights (the cached lane adds only the cache); activations and
the VAE decode are estimates, stated as such. Offloading options, in the order the card table tries them after
"all resident": diffusers' `enable_model_cpu_offload`
(one component on the GPU at a time: the transformer leaves the GPU while each lane encodes its prompt);
`enable_sequential_cpu_offload` (weights streamed per submodule every step: little memory, many times slower). The
peak with the text encoders off the GPU altogether (prompts encoded on the CPU, or fixed prompts encoded once and the
encoders dropped) is printed too; the app does not offer that.
"""

from dataclasses import dataclass

import torch

from . import bench_gpu

GIB = 2**30
BF16 = 2

T5_XXL = ("T5EncoderModel", "T5Config", dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64,
                                              num_layers=24, feed_forward_proj="gated-gelu", tie_word_embeddings=False))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
              max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
KL_VAE_16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                 layers_per_block=2, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False)
QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]))

# component: ("diffusers" | "transformers", class, config class or None, config)
MODELS = {
    "qwen-image": dict(
        components={
            "transformer": ("diffusers", "QwenImageTransformer2DModel", None,
                            bench_gpu.CONFIGS["qwen-image"]["config"]),
            "text_encoder (Qwen2.5-VL-7B)": ("transformers", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig",
                                             QWEN25_VL_7B),
            "vae": ("diffusers", "AutoencoderKLQwenImage", None,
                    dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0))},
        # true CFG: "cond" and "uncond" contexts, batch 1 each; text as long as the prompt, at most 512 tokens
        contexts=2, batch=1, text_tokens=512, width=24 * 128, vae_full_res_channels=(192, 96)),
    "flux-dev": dict(
        components={
            "transformer": ("diffusers", "FluxTransformer2DModel", None, bench_gpu.CONFIGS["flux-dev"]["config"]),
            "text_encoder (CLIP-L)": ("transformers", "CLIPTextModel", "CLIPTextConfig", CLIP_L),
            "text_encoder_2 (T5-XXL)": ("transformers", *T5_XXL),
            "vae": ("diffusers", "AutoencoderKL", None, KL_VAE_16)},
        # guidance-distilled: one call per step ("cond"); T5 padded to 512 tokens
        contexts=1, batch=1, text_tokens=512, width=24 * 128, vae_full_res_channels=(256, 128)),
    "sd35-medium": dict(
        components={
            "transformer": ("diffusers", "SD3Transformer2DModel", None,
                            dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                 num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                 pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                 dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")),
            "text_encoder (CLIP-L)": ("transformers", "CLIPTextModelWithProjection", "CLIPTextConfig", CLIP_L),
            "text_encoder_2 (CLIP-G)": ("transformers", "CLIPTextModelWithProjection", "CLIPTextConfig", CLIP_G),
            "text_encoder_3 (T5-XXL)": ("transformers", *T5_XXL),
            "vae": ("diffusers", "AutoencoderKL", None, KL_VAE_16)},
        # CFG batched in one call with no cache context ("default"): batch 2; CLIP's 77 + T5's 256 tokens
        contexts=1, batch=2, text_tokens=77 + 256, width=24 * 64, vae_full_res_channels=(256, 128)),
}
# what each card class offers, in GiB, the smallest of the class (nvidia-smi's totals, about): A10G and L4 23 GB of
# 24, L40S 45 of 48; ZeroGPU's "70 GB" H200 slice taken as 70e9 bytes
CARDS = [("24 GB (RTX 4090, L4, A10G)", 22.5), ("48 GB (L40S, A6000)", 45.0),
         ("ZeroGPU (H200 slice, 70 GB)", 70e9 / 2**30), ("80 GB (A100, H100)", 79.6)]
CUDA_OVERHEAD = 1 * GIB  # CUDA context and allocator slack: an estimate


def build(library: str, cls: str, config_cls: str | None, config: dict) -> torch.nn.Module:
    """The module at this configuration on the meta device: shapes, no memory, no arithmetic."""
    module = __import__(library)
    with torch.device("meta"):
        if config_cls is None:
            return getattr(module, cls)(**config)
        return getattr(module, cls)(getattr(module, config_cls)(**config))


def tensor_count(module: torch.nn.Module) -> tuple[int, int]:
    """(numbers in the checkpoint, in the largest leaf module): parameters and persistent floating buffers (SD3's
    positional table is one: 0.23 B numbers), each shared tensor counted once."""
    saved = {id(t): t.numel() for t in module.state_dict(keep_vars=True).values() if t.is_floating_point()}
    leaf = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())
    return sum(saved.values()), leaf


def image_tokens(resolution: int) -> int:
    """All three: VAE downsamples 8x, then 2x2 patches (packed or patch-embedded)."""
    return (resolution // 16) ** 2


def cache_bound(contexts: int, groups: int, k: int, batch: int, tokens: int, width: int, dtype_bytes: int) -> int:
    """Bytes LayerCache's hooks hold at most: per cache context and group, K residuals (a group's log keeps its last
    K computed ones, K the schedule's largest), each (batch, tokens, width) over both streams (image + text tokens).
    A schedule reusing outputs (`Schedule.reuse`) with telemetry on holds one residual more per group (the
    velocity-change map's last residual): count it as K + 1."""
    return contexts * groups * k * batch * tokens * width * dtype_bytes


def measured_cache_bytes(transformer) -> int:
    """Bytes of the residuals LayerCache's hooks hold now on this transformer, over every cache context."""
    from ..hooks import model_hook

    hook = model_hook(transformer)
    total = 0
    for state in hook.steps.states():
        for entry in [*(e for log in state.residuals for e in log), *filter(None, state.last_residual)]:
            total += sum(t.numel() * t.element_size() for t in entry if t is not None)
    return total


def transformer_activations(spec: dict, resolution: int) -> int:
    """Estimate: the live tensors of one block, ~16 hidden-sized ones per token (QKV, the attention output, the 4x
    MLP before and after its activation, both streams in and out; attention itself in SDPA's fused kernels)."""
    return 16 * spec["batch"] * (image_tokens(resolution) + spec["text_tokens"]) * spec["width"] * BF16


def vae_decode_activations(spec: dict, resolution: int) -> int:
    """Estimate: the decoder's full-resolution stage, its upsampled input and three feature maps of its width."""
    before, full = spec["vae_full_res_channels"]
    return (before + 3 * full) * resolution**2 * BF16


@dataclass
class Report:
    key: str
    components: dict   # name -> (parameters, bytes)
    largest_leaf: int  # bytes of the largest module sequential offloading moves at once
    cache: int
    activations: int
    vae_decode: int

    @property
    def weights(self) -> int:
        return sum(b for _, b in self.components.values())

    def component(self, prefix: str) -> int:
        return sum(b for name, (_, b) in self.components.items() if name.startswith(prefix))

    def peaks(self) -> dict:
        """Peak GPU bytes per offloading option (both lanes share the weights; the cache and activations once: the
        lanes take turns)."""
        transformer, vae = self.component("transformer"), self.component("vae")
        denoise, decode = self.cache + self.activations + CUDA_OVERHEAD, self.vae_decode + CUDA_OVERHEAD
        largest_text_encoder = max(b for name, (_, b) in self.components.items() if name.startswith("text_encoder"))
        return {
            "all resident": self.weights + max(denoise, decode),
            "model_cpu_offload": max(transformer + denoise, vae + decode, largest_text_encoder + CUDA_OVERHEAD),
            "sequential_cpu_offload": self.largest_leaf + max(denoise, decode),
            # not an option the app offers: prompts encoded on the CPU, or fixed prompts encoded once
            "text encoders off the GPU": transformer + vae + max(denoise, decode),
        }


def report(key: str, groups: int, k: int, resolution: int) -> Report:
    spec = MODELS[key]
    components, largest_leaf = {}, 0
    for name, (library, cls, config_cls, config) in spec["components"].items():
        params, leaf = tensor_count(build(library, cls, config_cls, config))
        components[name] = (params, params * BF16)
        largest_leaf = max(largest_leaf, leaf * BF16)
    cache = cache_bound(spec["contexts"], groups, k, spec["batch"], image_tokens(resolution) + spec["text_tokens"],
                        spec["width"], BF16)
    return Report(key, components, largest_leaf, cache,
                  transformer_activations(spec, resolution), vae_decode_activations(spec, resolution))


def fits(peaks: dict, card_gib: float) -> str:
    for option in ("all resident", "model_cpu_offload", "sequential_cpu_offload"):
        if peaks[option] <= card_gib * GIB:
            return option
    return "does not fit"


def run(args):
    if args.groups < 1 or args.max_k < 1 or args.resolution < 16 or args.resolution % 16:
        raise ValueError("--groups and --max-k must be >= 1 and --resolution a multiple of 16")
    reports = [report(key, args.groups, args.max_k, args.resolution) for key in MODELS]
    print(f"bf16 weights on the meta device; {args.resolution}x{args.resolution}, {args.groups} groups, K <= "
          f"{args.max_k}; GiB = 2^30 bytes")
    for r in reports:
        spec = MODELS[r.key]
        print(f"\n== {r.key}")
        for name, (params, size) in r.components.items():
            print(f"  {name:<28} {params / 1e9:7.3f} B parameters  {size / GIB:7.2f} GiB")
        print(f"  {'all weights':<28} {sum(p for p, _ in r.components.values()) / 1e9:7.3f} B parameters  "
              f"{r.weights / GIB:7.2f} GiB  (one set, shared by both lanes)")
        print(f"  cache bound: {spec['contexts']} context(s) x {args.groups} groups x K={args.max_k} x batch "
              f"{spec['batch']} x ({image_tokens(args.resolution)} image + {spec['text_tokens']} text tokens) x "
              f"width {spec['width']} x 2 B = {r.cache / GIB:.2f} GiB (a plan reusing outputs, with the app's "
              f"telemetry: K+1)")
        print(f"  estimates: transformer activations {r.activations / GIB:.2f} GiB, VAE decode "
              f"{r.vae_decode / GIB:.2f} GiB, CUDA context {CUDA_OVERHEAD / GIB:.0f} GiB")
        for option, peak in r.peaks().items():
            print(f"  peak, {option:<24} {peak / GIB:7.2f} GiB")
    print("\nwhich card runs which model in the app (the first option that fits; usable GiB per card in brackets):")
    print(f"  {'card':<37}" + "".join(f"{r.key:<26}" for r in reports))
    for label, gib in CARDS:
        print(f"  {label + f' [{gib:.1f}]':<37}" + "".join(f"{fits(r.peaks(), gib):<26}" for r in reports))
