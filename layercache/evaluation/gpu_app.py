"""The app's path on a GPU at the real models' scale: the two-lane runner (`studio/runner.py`, what the app streams)
on Qwen-Image, FLUX.1-dev and SD3.5 Medium with random bf16 weights, on CUDA, with no download.

    python -m layercache gpu-app [--models qwen-image,flux-dev,sd35-medium] [--steps 50] [--budget 0.5] [--groups 4]
    python -m layercache gpu-app --tiny     # the same code at a tiny size on the CPU (float32), for a test

Each pipeline is the model's real diffusers pipeline class with its transformer and VAE at their published
configurations (`bench_gpu.CONFIGS`, `memory.MODELS`) and random weights, built directly on the device in bf16; the
text encoders are left out and random prompt embeddings of the real shapes passed instead (the app encodes the
prompt once per lane; not timed here). 1024 x 1024. The cached lane runs LayerCache at --budget, planned on a
synthetic error table (`bench_gpu.synthetic_calibration`: speed depends only on which cells run) with groups cut by
FLOPs measured on one step. Printed per model: weights and peak GPU memory of the run, time from starting the run
to the first streamed step (both lanes' step 1 and their previews), the median per-step time of each lane, the
median cost of one live preview, and the realized speed-up (uncached lane time / cached lane time, VAE decode
included) against the ideal one (FLOPs of the uncached run over the cached run's).
"""

import statistics
import time

import numpy as np
import torch

from ..calibrate import sigma_grid
from ..groups import measure_block_flops
from ..methods import LayerCacheSetting
from ..planner import check_budget, plan
from ..studio import runner as runner_module
from . import bench_gpu, memory

# key: pipeline class, transformer, VAE, text tokens and widths of the prompt embeddings, the pipeline's guidance
FULL = {
    "qwen-image": dict(pipeline="QwenImagePipeline",
                       transformer=memory.MODELS["qwen-image"]["components"]["transformer"],
                       vae=memory.MODELS["qwen-image"]["components"]["vae"], text=(256, 3584, None),
                       guidance={"true_cfg_scale": 4.0}, size=1024),
    "flux-dev": dict(pipeline="FluxPipeline", transformer=memory.MODELS["flux-dev"]["components"]["transformer"],
                     vae=memory.MODELS["flux-dev"]["components"]["vae"], text=(512, 4096, 768),
                     vae_scaling=dict(scaling_factor=0.3611, shift_factor=0.1159),  # the repo's vae/config.json
                     guidance={"guidance_scale": 3.5}, size=1024),
    "sd35-medium": dict(pipeline="StableDiffusion3Pipeline",
                        transformer=memory.MODELS["sd35-medium"]["components"]["transformer"],
                        vae=memory.MODELS["sd35-medium"]["components"]["vae"], text=(333, 4096, 2048),
                        vae_scaling=dict(scaling_factor=1.5305, shift_factor=0.0609),
                        guidance={"guidance_scale": 4.5}, size=1024),
}
_KL4 = ("diffusers", "AutoencoderKL", None,
        dict(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=4,
             norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False))
TINY = {  # the same classes at widths of 16-32, 32 x 32 px; 4 blocks each, so the default 4 groups run
    "qwen-image": dict(FULL["qwen-image"], text=(6, 32, None), size=32,
                       transformer=("diffusers", "QwenImageTransformer2DModel", None,
                                    dict(patch_size=2, in_channels=16, out_channels=4, num_layers=4,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         axes_dims_rope=(4, 6, 6))),
                       vae=("diffusers", "AutoencoderKLQwenImage", None,
                            dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4))),
    "flux-dev": dict(FULL["flux-dev"], text=(6, 32, 32), size=32, vae=_KL4,
                     transformer=("diffusers", "FluxTransformer2DModel", None,
                                  dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)))),
    "sd35-medium": dict(FULL["sd35-medium"], text=(6, 32, 64), size=32, vae=_KL4,
                        transformer=("diffusers", "SD3Transformer2DModel", None,
                                     dict(sample_size=16, patch_size=2, in_channels=4, num_layers=4,
                                          attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                          caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                          qk_norm="rms_norm", dual_attention_layers=(0,)))),
}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build_pipeline(spec: dict, device: str, dtype: torch.dtype):
    """The pipeline class with its transformer and VAE built on `device` in `dtype` (random weights), no text
    encoders."""
    import diffusers

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype on the device: 20 B fp32 parameters would not fit
    torch.manual_seed(0)
    try:
        with torch.device(device):
            transformer = getattr(diffusers, spec["transformer"][1])(**spec["transformer"][3]).eval()
            vae = getattr(diffusers, spec["vae"][1])(**spec["vae"][3], **spec.get("vae_scaling", {})).eval()
    finally:
        torch.set_default_dtype(default)
    cls = getattr(diffusers, spec["pipeline"])
    encoders = {name: None for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                        "text_encoder_3", "tokenizer_3") if name in cls.__init__.__code__.co_varnames}
    pipe = cls(transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), **encoders)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_call(spec: dict, device: str, dtype: torch.dtype) -> dict:
    """Random prompt embeddings of the real shapes (and the negative ones where the pipeline runs CFG), the image
    size and the guidance."""
    tokens, width, pooled = spec["text"]
    g = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    call = {"prompt_embeds": randn(1, tokens, width), "height": spec["size"], "width": spec["size"],
            **spec["guidance"]}
    if pooled:
        call["pooled_prompt_embeds"] = randn(1, pooled)
    if spec["pipeline"] == "QwenImagePipeline":
        mask = torch.ones(1, tokens, dtype=torch.long, device=device)
        call.update(prompt_embeds_mask=mask, negative_prompt_embeds=randn(1, tokens, width),
                    negative_prompt_embeds_mask=mask)
    if spec["pipeline"] == "StableDiffusion3Pipeline":
        call.update(negative_prompt_embeds=randn(1, tokens, width), negative_pooled_prompt_embeds=randn(1, pooled))
    return call


class _PreviewClock:
    """Times the runner's `preview_image` (each call synced on CUDA) while installed."""

    def __init__(self, device):
        self.device, self.seconds, self.real = device, [], runner_module.preview_image

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        start = time.perf_counter()
        out = self.real(*args, **kwargs)
        _sync(self.device)
        self.seconds.append(time.perf_counter() - start)
        return out

    def __enter__(self):
        runner_module.preview_image = self
        return self

    def __exit__(self, *exc):
        runner_module.preview_image = self.real


def _per_step(events, lane) -> float:
    """Median seconds of one step of `lane`, from the cumulative clocks the step events carry."""
    clocks = [0.0, *(e["elapsed_s"][lane] for e in events)]
    return statistics.median(np.diff(clocks))


def run_model(key, spec, device, dtype, steps, budget, groups) -> dict:
    pipe = build_pipeline(spec, device, dtype)
    call = pipeline_call(spec, device, dtype)
    flops, other = measure_block_flops(pipe.transformer, lambda: sigma_grid(pipe, call, steps))
    sigmas = sigma_grid(pipe, call, steps)
    cal = bench_gpu.synthetic_calibration(pipe.transformer, sigmas, groups, costs=flops)
    schedule = plan(cal, budget)
    cache = LayerCacheSetting(schedule)
    lockstep = runner_module.LockstepRunner(pipe)
    for lane in lockstep.pipes.values():
        lane.set_progress_bar_config(disable=True)
    for _ in lockstep.run(call, 0, 2, cache, groups):  # warm-up: kernels, allocator
        pass
    _sync(device)
    cuda = torch.device(device).type == "cuda"
    weights = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _PreviewClock(device) as previews:
        start = time.perf_counter()
        first, events, final = None, [], None
        for event in lockstep.run(call, 0, steps, cache, groups):
            if event["kind"] == "step":
                first = time.perf_counter() - start if first is None else first
                events.append(event)
            else:
                final = event
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    fraction = (schedule.compute_fraction * sum(flops) + other) / (sum(flops) + other)
    return {"params": sum(p.numel() for p in pipe.transformer.parameters()), "weights": weights, "peak": peak,
            "first_step_s": first, "step_s": {lane: _per_step(events, lane) for lane in runner_module.LANES},
            "preview_s": statistics.median(previews.seconds), "realized": final["metrics"]["wall_speedup"],
            "ideal": 1.0 / fraction, "compute": fraction, "steps": len(events)}


def run(args):
    """`python -m layercache gpu-app`: the arguments are declared once, in `layercache/cli.py`."""
    specs = TINY if args.tiny else FULL
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in specs]
    if unknown or not models:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(specs)}")
    budget = check_budget(args.budget)
    if args.steps < 2 or args.groups < 1:
        raise ValueError(f"--steps must be >= 2 and --groups >= 1, got {args.steps} and {args.groups}")
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("gpu-app needs a CUDA GPU; none is visible (--tiny runs a tiny size on the CPU)")
    card = torch.cuda.get_device_name() if device == "cuda" else "none: --tiny on the CPU, float32"
    print(f"GPU: {card}, torch {torch.__version__}; the app's two-lane runner, {args.steps} steps, LayerCache at "
          f"budget {budget}, {args.groups} groups")
    print(f"{'model':<12} {'params':>7} {'weights':>8} {'peak':>8} {'first step':>10} {'uncached step':>13} "
          f"{'cached step':>11} {'preview':>8} {'realized':>8} {'ideal':>6} {'realized/ideal':>14}")
    gib = 2 ** 30
    for key in models:
        r = run_model(key, specs[key], device, dtype, args.steps, budget, args.groups)
        weights, peak = ((f"{r[k] / gib:>5.2f}GiB" for k in ("weights", "peak")) if device == "cuda"
                         else ("n/a (CPU)",) * 2)
        print(f"{key:<12} {r['params'] / 1e9:>6.2f}B {weights:>8} {peak:>8} "
              f"{r['first_step_s']:>9.3f}s {1e3 * r['step_s']['uncached']:>11.1f}ms "
              f"{1e3 * r['step_s']['cached']:>9.1f}ms {1e3 * r['preview_s']:>6.2f}ms {r['realized']:>7.3f}x "
              f"{r['ideal']:>5.3f}x {r['realized'] / r['ideal']:>14.3f}", flush=True)
        if device == "cuda":
            bench_gpu.release_model_memory()
