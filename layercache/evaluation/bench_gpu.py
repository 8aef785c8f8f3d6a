"""LayerCache's real speed at the scale of the real models, on one CUDA GPU, with no download.

    python -m layercache bench-gpu [--models qwen-image,flux-dev] [--budgets 0.73,0.5] [--steps 50]

Speed does not depend on the weights' values, so the transformers of Qwen-Image (60 dual-stream blocks)
and FLUX.1-dev (19 double + 38 single blocks) are built from their published configurations with random
weights, in bf16, and run at 1024x1024 (4096 image tokens) with a realistic text length. Sampling is the
pipelines' own loop without text encoder and VAE: Euler over sigmas linspace(1, 1/N, N), each CFG branch
a separate call in its cache context (Qwen-Image: true CFG, two calls per step; FLUX.1-dev: guidance-
distilled, one call). Schedules come from the planner on a synthetic error table (a calibration of
random weights would measure nothing about real dynamics; the speed depends only on which cells run).
Block costs are FLOPs measured on one step (torch's FlopCounterMode); the ideal speed-up is the uncached
run's FLOPs over the cached run's, the work outside the blocks included.
"""

import gc
import statistics
import time

import numpy as np
import torch

from ..calibrate import Calibration, error_table
from ..groups import measure_block_flops, model_id, partition
from ..hooks import LayerCacheConfig, apply_layer_cache, model_hook, remove_layer_cache
from ..planner import check_budget, plan

CONFIGS = {
    "qwen-image": dict(cls="QwenImageTransformer2DModel", text_tokens=256, branches=("cond", "uncond"),
                       config=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
                                   axes_dims_rope=(16, 56, 56))),
    "flux-dev": dict(cls="FluxTransformer2DModel", text_tokens=512, branches=("cond",),
                     config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                 pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
}
IMAGE_GRID = 64  # 1024 px / 8 (VAE) / 2 (patch) = 64 -> 4096 image tokens
DEVICE = "cuda"  # tests shrink CONFIGS and IMAGE_GRID and set "cpu" to check the script without a GPU


def _cuda() -> bool:
    return DEVICE == "cuda"


def _sync():
    if _cuda():
        torch.cuda.synchronize()


def release_model_memory():
    """Hand a finished model's GPU memory back before the next one is measured. Models with hooks sit in reference
    cycles (hook registries and lanes point back at their modules), so collect them first, or the next model's
    memory figures count this one's weights too."""
    gc.collect()
    torch.cuda.empty_cache()


def build(name: str):
    import diffusers

    spec = CONFIGS[name]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build directly in bf16 on the GPU: 20B fp32 params would not fit
    try:
        with torch.device(DEVICE):
            transformer = getattr(diffusers, spec["cls"])(**spec["config"]).eval()
    finally:
        torch.set_default_dtype(default)
    return transformer


def inputs(name: str, transformer, generator):
    """The keyword arguments the real pipeline passes, less hidden_states and timestep."""
    spec, dev, dt = CONFIGS[name], DEVICE, torch.bfloat16
    cfg = transformer.config
    text = torch.randn(1, spec["text_tokens"], cfg.joint_attention_dim, device=dev, dtype=dt, generator=generator)
    if name == "qwen-image":
        return {"encoder_hidden_states": text,
                "encoder_hidden_states_mask": torch.ones(1, spec["text_tokens"], dtype=torch.bool, device=dev),
                "img_shapes": [[(1, IMAGE_GRID, IMAGE_GRID)]]}
    ids = torch.zeros(IMAGE_GRID, IMAGE_GRID, 3, device=dev)
    ids[..., 1] = torch.arange(IMAGE_GRID, device=dev)[:, None]
    ids[..., 2] = torch.arange(IMAGE_GRID, device=dev)[None, :]
    return {"encoder_hidden_states": text,
            "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, device=dev, dtype=dt, generator=generator),
            "guidance": torch.full((1,), 3.5, device=dev, dtype=torch.float32),
            "img_ids": ids.reshape(-1, 3), "txt_ids": torch.zeros(spec["text_tokens"], 3, device=dev)}


@torch.no_grad()
def sample(name, transformer, conds, latents, sigmas, step_times=None):
    """Euler sampling as the pipelines do it; CFG branches in their own cache contexts."""
    grid = list(sigmas) + [0.0]
    x = latents
    for i, sigma in enumerate(sigmas):
        start = time.perf_counter()
        t = torch.full((1,), sigma, device=x.device, dtype=x.dtype)
        velocities = []
        for branch, cond in zip(CONFIGS[name]["branches"], conds):
            with transformer.cache_context(branch):
                velocities.append(transformer(hidden_states=x, timestep=t, return_dict=False, **cond)[0])
        v = velocities[0] if len(velocities) == 1 else velocities[1] + 4.0 * (velocities[0] - velocities[1])
        x = x + (grid[i + 1] - sigma) * v
        if step_times is not None:
            _sync()
            step_times.append(time.perf_counter() - start)
    return x


def synthetic_calibration(transformer, sigmas, num_groups: int, costs=None, max_horizon: int = 6) -> Calibration:
    """A calibration of made-up but smooth residual trajectories (speed depends only on which cells run): each
    group's residual is quadratic in sigma plus a little noise, deeper groups curving more. `costs`: per-block
    FLOPs (partition's static proxy without them)."""
    layout = partition(transformer, num_groups, costs=costs)
    n = len(sigmas)
    gen = np.random.default_rng(0)
    s = np.asarray(sigmas, dtype=np.float64)[:, None]
    trajectories = np.stack([gen.normal(size=64) + s * gen.normal(size=64) + (1 + g) * s ** 2 * gen.normal(size=64)
                             + 0.01 * gen.normal(size=(n, 64)) for g in range(num_groups)])       # (G, N, 64)
    gram = np.einsum("gis,hjs->ghij", trajectories, trajectories)     # across groups, as calibration keeps it
    candidates = [("slope", 1), ("slope", 2), ("slope", 3), ("slope", 4)]
    errors = error_table(np.einsum("ggij->gij", gram), list(sigmas), candidates, max_horizon)
    return Calibration(model_id(transformer), list(sigmas), list(layout.starts), layout.num_blocks,
                       list(layout.costs), candidates, errors, gram, np.zeros((n, num_groups)), np.zeros((0,)),
                       {"synthetic": True})


def cache_bytes(transformer) -> int:
    """Bytes held by LayerCache's per-context residual logs right now."""
    total = 0
    for state in model_hook(transformer).steps.states():
        for log in state.residuals:
            for pair in log:
                total += sum(t.numel() * t.element_size() for t in pair if t is not None)
    return total


def run_config(name, budgets, steps, groups, repeats):
    transformer = build(name)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    conds = [inputs(name, transformer, gen) for _ in CONFIGS[name]["branches"]]
    channels = transformer.config.in_channels
    latents = torch.randn(1, IMAGE_GRID * IMAGE_GRID, channels, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    sigmas = [float(s) for s in np.linspace(1.0, 1.0 / steps, steps)]
    flops, other = measure_block_flops(transformer, lambda: sample(name, transformer, conds, latents, sigmas[:1]))
    cal = synthetic_calibration(transformer, sigmas, groups, costs=flops)
    schedules = {b: plan(cal, b) for b in budgets}
    params = sum(p.numel() for p in transformer.parameters())
    print(f"\n== {name}: {params / 1e9:.2f}B parameters, "
          f"{IMAGE_GRID * IMAGE_GRID} image + {CONFIGS[name]['text_tokens']} text tokens, {steps} steps, "
          f"{len(CONFIGS[name]['branches'])} call(s)/step, {groups} groups", flush=True)
    print(f"FLOPs per step: blocks {sum(flops) / 1e12:.2f} T (each {min(flops) / 1e12:.3f}-{max(flops) / 1e12:.3f} T), "
          f"outside the blocks {other / 1e12:.3f} T; group shares {np.round(cal.group_costs, 3).tolist()}")

    def timed(schedule):
        if schedule is not None:
            apply_layer_cache(transformer, LayerCacheConfig(schedule, telemetry=False))
        _sync()
        base = torch.cuda.memory_allocated() if _cuda() else 0
        if _cuda():
            torch.cuda.reset_peak_memory_stats()
        step_times = []
        try:
            start = time.perf_counter()
            sample(name, transformer, conds, latents, sigmas, step_times)
            total = time.perf_counter() - start
            held = cache_bytes(transformer) if schedule is not None else 0
        finally:
            if schedule is not None:
                remove_layer_cache(transformer)
        peak = torch.cuda.max_memory_allocated() - base if _cuda() else 0
        return total, statistics.median(step_times), peak, held, base

    sample(name, transformer, conds, latents, sigmas[:3] + [sigmas[-1]])  # warm-up (kernels, allocator)
    results = {None: [], **{b: [] for b in budgets}}
    for _ in range(repeats):  # interleaved
        for key in results:
            results[key].append(timed(schedules.get(key)))
    base_total = statistics.median(r[0] for r in results[None])
    print(f"{'variant':<12} {'compute':>7} {'step ms':>8} {'total s':>8} {'speed-up':>8} {'ideal':>6} "
          f"{'ratio':>6} {'peak GiB':>9} {'extra GiB':>9} {'cache GiB':>9}")
    base_peak = statistics.median(r[2] for r in results[None])
    for key, runs in results.items():
        planned = 1.0 if key is None else schedules[key].compute_fraction
        fraction = (planned * sum(flops) + other) / (sum(flops) + other)  # of the uncached run's FLOPs
        total = statistics.median(r[0] for r in runs)
        step = statistics.median(r[1] for r in runs)
        peak = statistics.median(r[2] for r in runs)
        held = max(r[3] for r in runs)
        weights = runs[0][4]
        label = "uncached" if key is None else f"budget {key}"
        print(f"{label:<12} {fraction:>7.3f} {1000 * step:>8.1f} {total:>8.2f} {base_total / total:>8.3f} "
              f"{1 / fraction:>6.3f} {base_total / total * fraction:>6.3f} {(weights + peak) / 2**30:>9.2f} "
              f"{(peak - base_peak) / 2**30:>9.2f} {held / 2**30:>9.2f}", flush=True)


def run(args):
    """`python -m layercache bench-gpu`: the arguments are declared once, in `layercache/cli.py`."""
    models = args.models.split(",")
    unknown = [m for m in models if m not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(CONFIGS)}")
    budgets = [check_budget(float(b)) for b in args.budgets.split(",")]
    if _cuda() and not torch.cuda.is_available():
        raise ValueError("bench-gpu needs a CUDA GPU; none is visible")
    torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name() if _cuda() else "none (cpu smoke run)"
    print(f"GPU: {gpu}, torch {torch.__version__}, bf16")
    for name in models:
        run_config(name, budgets, args.steps, args.groups, args.repeats)
        if _cuda():
            release_model_memory()

