"""What the app's live preview costs against one transformer step, at 1024 x 1024, on this machine.

    python -m layercache preview-cost [--grid 16] [--repeats 20] [--step-repeats 3] [--threads 1]

Preview: what the runner does for one lane at one step: the x0 estimate from the step's latents and velocity of
the real layout (FLUX.1-dev and Qwen-Image: 4096 tokens x 64, 2 x 2 patches packed; SD3.5 Medium: 16 x 128 x
128; in the transformer's dtype), then `studio.preview.preview_image`: a 128 x 128 RGB numpy image out
(unpacking, the linear latent-to-RGB map, the copy to the host). Not included: the app's enlarging and PNG
encoding for the browser, which the bundled model's previews pay too.
Median of --repeats; on the CPU with --threads torch threads (default 1, as the app runs). The pipelines are bare
instances of the FLUX.1 / Qwen-Image / SD3 pipeline classes with the real VAE scale factor (8) and default size
(1024 px): all the preview reads from a pipeline.

Transformer step: FLUX.1-dev's and Qwen-Image's transformers at their real width (bench-gpu's configurations)
with random weights, but one block of each kind, run at an image grid of --grid x --grid tokens (64 = 1024 px)
with the text length scaled alike. Each block is timed (median of --step-repeats); then scaled to the real model:
times the ratio of its FLOPs at 1024 px to its FLOPs as run (torch's FlopCounterMode; the 1024 px count on the
meta device), times the real number of such blocks, plus the work outside the blocks scaled the same way, times
the transformer calls per step (Qwen-Image: 2, true CFG; FLUX.1-dev: 1, guidance-distilled). At --grid 64 no
token scaling is involved. An estimate, then: it assumes the FLOP rate of the size run at 1024 px, where larger
matrix products usually run faster, so below --grid 64 it more likely overstates the step than understates it.
fp32 on the CPU (no fast bf16 kernels here), bf16 on CUDA (where --grid 64 is the default). SD3.5 Medium's step
is not estimated (no configuration of it here); its preview is listed.
"""

import statistics
import time

import torch

from ..groups import find_blocks, measure_block_flops
from ..studio.preview import preview_image
from . import bench_gpu

FULL_GRID = 64  # 1024 px / 8 (VAE) / 2 (patch)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _preview_pipes():
    """Each family's pipeline class, bare, with the real VAE scale (8) and default size (1024 px)."""
    import diffusers

    pipes = {}
    for key, cls in (("flux-dev", "FluxPipeline"), ("qwen-image", "QwenImagePipeline"),
                     ("sd35-medium", "StableDiffusion3Pipeline")):
        pipe = object.__new__(getattr(diffusers, cls))  # no components: the preview reads only these two numbers
        pipe.vae_scale_factor, pipe.default_sample_size = 8, 2 * FULL_GRID  # latent pixels per side
        pipes[key] = pipe
    return pipes


def preview_seconds(device, dtype, repeats: int) -> dict:
    shapes = {"flux-dev": (1, FULL_GRID ** 2, 64), "qwen-image": (1, FULL_GRID ** 2, 64),
              "sd35-medium": (1, 16, 2 * FULL_GRID, 2 * FULL_GRID)}
    out = {}
    for key, pipe in _preview_pipes().items():
        latents, velocity = (torch.randn(shapes[key], device=device, dtype=dtype) for _ in range(2))

        def one():  # as the runner's `_x0` and `preview_image`
            return preview_image(pipe, latents.float() - 0.5 * velocity.float())

        out[key] = (shapes[key], one().shape, _median_seconds(one, device, repeats))
    return out


def _build(name, device, dtype):
    """The model at its real width with one block of each kind."""
    import diffusers

    spec = bench_gpu.CONFIGS[name]
    config = dict(spec["config"], num_layers=1)
    if "num_single_layers" in config:
        config["num_single_layers"] = 1
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            return getattr(diffusers, spec["cls"])(**config).eval()
    finally:
        torch.set_default_dtype(default)


def _inputs(name, transformer, grid, device, dtype):
    """hidden_states, timestep and the keyword arguments the pipeline passes, at a grid x grid image."""
    cfg, spec = transformer.config, bench_gpu.CONFIGS[name]
    text_tokens = max(1, spec["text_tokens"] * grid ** 2 // FULL_GRID ** 2)
    kwargs = {"hidden_states": torch.randn(1, grid * grid, cfg.in_channels, device=device, dtype=dtype),
              "timestep": torch.full((1,), 0.5, device=device, dtype=dtype),
              "encoder_hidden_states": torch.randn(1, text_tokens, cfg.joint_attention_dim, device=device, dtype=dtype)}
    if name == "qwen-image":
        return dict(kwargs, encoder_hidden_states_mask=torch.ones(1, text_tokens, dtype=torch.bool, device=device),
                    img_shapes=[[(1, grid, grid)]])
    ids = torch.zeros(grid, grid, 3, device=device)
    ids[..., 1] = torch.arange(grid, device=device)[:, None]
    ids[..., 2] = torch.arange(grid, device=device)[None, :]
    return dict(kwargs, pooled_projections=torch.randn(1, cfg.pooled_projection_dim, device=device, dtype=dtype),
                guidance=torch.full((1,), 3.5, device=device), img_ids=ids.reshape(-1, 3),
                txt_ids=torch.zeros(text_tokens, 3, device=device))


def _flops(name, grid, dtype):
    """FLOPs per block and outside the blocks at a grid x grid image: shapes only, on the meta device."""
    transformer = _build(name, "meta", dtype)
    inputs = _inputs(name, transformer, grid, "meta", dtype)
    return measure_block_flops(transformer, lambda: transformer(**inputs, return_dict=False))


@torch.no_grad()
def step_seconds(name, grid, device, dtype, repeats: int) -> dict:
    """One step of the real model, estimated from one block of each kind timed at `grid` (see the module)."""
    transformer = _build(name, device, dtype)
    blocks = find_blocks(transformer)
    inputs = _inputs(name, transformer, grid, device, dtype)
    starts, spans = {}, {index: [] for index in range(len(blocks))}

    def before(index):
        def hook(module, args):
            _sync(device)
            starts[index] = time.perf_counter()
        return hook

    def after(index):
        def hook(module, args, output):
            _sync(device)
            spans[index].append(time.perf_counter() - starts[index])
        return hook

    handles = [h for i, (_, block) in enumerate(blocks)
               for h in (block.register_forward_pre_hook(before(i)), block.register_forward_hook(after(i)))]
    total = _median_seconds(lambda: transformer(**inputs, return_dict=False), device, repeats)
    for handle in handles:
        handle.remove()
    block_times = [statistics.median(spans[i][1:]) for i in range(len(blocks))]  # the warm-up left out
    run_flops, run_other = _flops(name, grid, dtype)
    full_flops, full_other = _flops(name, FULL_GRID, dtype)

    config = bench_gpu.CONFIGS[name]["config"]
    counts = [config["num_layers"]] + ([config["num_single_layers"]] if "num_single_layers" in config else [])
    kinds = []
    for (block_name, _), seconds, ran, full, count in zip(blocks, block_times, run_flops, full_flops, counts):
        kinds.append({"kind": block_name.split(".")[0], "count": count, "seconds_as_run": seconds,
                      "seconds_full": seconds * full / ran})
    other_as_run = max(total - sum(block_times), 0.0)
    other_full = other_as_run * full_other / max(run_other, 1.0)
    calls = len(bench_gpu.CONFIGS[name]["branches"])
    per_call = sum(k["seconds_full"] * k["count"] for k in kinds) + other_full
    return {"kinds": kinds, "other_full": other_full, "calls": calls, "step": per_call * calls}


def run(args):
    if args.repeats < 1 or args.step_repeats < 1:
        raise ValueError(f"--repeats and --step-repeats must be >= 1, got {args.repeats} and {args.step_repeats}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    grid = args.grid or (FULL_GRID if device == "cuda" else 16)
    if not 1 <= grid <= FULL_GRID:
        raise ValueError(f"--grid must be from 1 to {FULL_GRID}, got {grid}")
    if device == "cpu":
        torch.set_num_threads(args.threads)  # the app runs with one
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"device: {name}; transformer in {str(dtype).removeprefix('torch.')}, its blocks timed at a {grid} x {grid} "
          f"image grid{'' if grid == FULL_GRID else f' and scaled by FLOPs to {FULL_GRID} x {FULL_GRID}'} (1024 px)")

    previews = preview_seconds(device, dtype, args.repeats)
    print(f"\npreview of one lane at one step (median of {args.repeats}):")
    for key, (shape, out, seconds) in previews.items():
        print(f"  {key:<12} x0 {tuple(shape)} -> image {tuple(out)}: {seconds * 1e3:.2f} ms")

    print(f"\none transformer step at 1024 x 1024 (estimated, blocks timed: median of {args.step_repeats}):")
    for key in bench_gpu.CONFIGS:
        step = step_seconds(key, grid, device, dtype, args.step_repeats)
        parts = ", ".join(f"{k['kind']} {k['seconds_full']:.3f} s x {k['count']}" for k in step["kinds"])
        print(f"  {key:<12} {parts}, outside the blocks {step['other_full']:.3f} s; x {step['calls']} call(s): "
              f"{step['step']:.2f} s per step; preview / step = {previews[key][2] / step['step']:.2e}")
