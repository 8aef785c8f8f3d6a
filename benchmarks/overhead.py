"""Cost of the machinery on the bundled model, timed interleaved in one process (median of repeats).

    python benchmarks/overhead.py [--repeats 7] [--budget 0.5]

Prints: hooked-but-all-computed time / unhooked time (target <= 1.03), and at the budget the realized
wall-clock speed-up against the ideal one, 1 / executed compute fraction (target ratio >= 0.85).
"""

import argparse
import statistics
import time

import torch

import layercache as lc
from layercache.models.registry import shipped_calibration
from layercache.models.tiny import TinyDigitPipeline
from layercache.speed import machine


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--telemetry", action="store_true", help="time with telemetry recording on")
    args = ap.parse_args()
    pipe = TinyDigitPipeline.from_weights()
    pipe.set_progress_bar_config(disable=True)
    cal = lc.Calibration.load(shipped_calibration("tiny", args.steps, 4))
    schedules = {"all computed": lc.plan(cal, 1.0), f"budget {args.budget}": lc.plan(cal, args.budget)}

    def timed(schedule=None):
        if schedule is not None:
            lc.enable(pipe, schedule, telemetry=args.telemetry)
        try:
            start = time.perf_counter()
            pipe(label=[7], num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                 output_type="pt")
            return time.perf_counter() - start
        finally:
            if schedule is not None:
                lc.disable(pipe)

    timed(), timed(schedules["all computed"])  # warm-up
    times = {"unhooked": [], **{name: [] for name in schedules}}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        times["unhooked"].append(timed())
        for name, schedule in schedules.items():
            times[name].append(timed(schedule))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {machine()}")
    print(f"one {args.steps}-step image with CFG, median of {args.repeats} interleaved repeats"
          f" (telemetry {'on' if args.telemetry else 'off'}):")
    for name, value in median.items():
        print(f"  {name:<14} {value:.3f} s")
    overhead = median["all computed"] / median["unhooked"]
    fraction = schedules[f"budget {args.budget}"].compute_fraction
    realized = median["unhooked"] / median[f"budget {args.budget}"]
    print(f"overhead, every cell computed: {overhead:.3f}x the unhooked time (target <= 1.03)")
    print(f"budget {args.budget}: realized speed-up {realized:.2f}x, ideal {1 / fraction:.2f}x, "
          f"ratio {realized * fraction:.2f} (target >= 0.85)")


if __name__ == "__main__":
    main()
