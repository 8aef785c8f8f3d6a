"""Wall-clock time of one image, and a description of the machine that measured it."""

import os
import platform
import statistics
import time

import torch


def machine() -> str:
    """'AMD EPYC ..., 2 cores (2 torch threads), torch 2.13.0': enough to compare figures across machines."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores ({torch.get_num_threads()} torch threads), torch {torch.__version__}"


def time_images(pipe, steps: int = 50, guidance: float = 3.0, repeats: int = 5, label: int = 7) -> list[float]:
    """Seconds per single-image call, after one untimed warm-up call (allocator, kernels, caches)."""
    def one():
        pipe(label=label, num_inference_steps=steps, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(0), output_type="pt")

    one()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> str:
    return (f"{statistics.median(times):.3f} s (median of {len(times)}; "
            f"min {min(times):.3f}, max {max(times):.3f})")
