"""Cost of the machinery on the bundled model, timed interleaved in one process (median of repeats).

    python -m layercache overhead [--model tiny] [--repeats 7] [--budgets 0.7,0.5,0.35,0.25,0.2] [--steps 50]

Prints: hooked-but-all-computed time / unhooked time (target <= 1.03), and at each budget the realized
wall-clock speed-up of LayerCache (`planner.plan`: reused steps reuse the groups' residuals), of LayerCache with
velocity steps (`plan(..., objective="outputs", velocity=True)`: a reused step calls nothing) and of MeanCache (same
calibration) against the ideal one, 1 / executed compute fraction (target: LayerCache within 10% of ideal and not
below MeanCache by more than noise).
"""

import statistics
import time

import torch

from ..calibrate import Calibration
from ..meancache import meancache_schedule
from ..methods import LayerCacheSetting, MeanCacheSetting, Uncached
from ..models.registry import get_entry, load_pipeline, shipped_calibration
from ..planner import plan
from .bench import parse_budgets
from .speed import machine


def validate(args) -> list[float]:
    """Every argument checked before any model work; returns the budgets. Raises ValueError saying what to change."""
    if not get_entry(args.model).bundled:
        raise ValueError(f"overhead times the bundled models only; {args.model!r} is a hub model: use bench-gpu")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    path = shipped_calibration(args.model, args.steps, 4)
    if not path.is_file():
        raise ValueError(f"no shipped calibration for {args.model} at {args.steps} steps ({path}); run "
                         f"`python -m layercache calibrate-shipped --model {args.model} --steps {args.steps}` first")
    return parse_budgets(args.budgets)


def run(args):
    budgets = validate(args)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration(args.model, args.steps, 4))
    schedules = {"all computed": plan(cal, 1.0)}
    for budget in budgets:
        schedules[f"layercache {budget}"] = plan(cal, budget)
        schedules[f"velocity {budget}"] = plan(cal, budget, objective="outputs", velocity=True)
        schedules[f"meancache {budget}"] = meancache_schedule(cal, budget)

    def timed(schedule=None):
        if schedule is None:
            cache = Uncached()
        else:
            cache = (MeanCacheSetting if schedule.meta["method"] == "meancache" else LayerCacheSetting)(schedule)
        cache.attach(pipe, telemetry=args.telemetry)
        try:
            start = time.perf_counter()
            pipe(label=[7], num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                 output_type="pt")
            return time.perf_counter() - start
        finally:
            cache.detach(pipe)

    timed(), timed(schedules["all computed"])  # warm-up
    times = {"unhooked": [], **{name: [] for name in schedules}}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        times["unhooked"].append(timed())
        for name, schedule in schedules.items():
            times[name].append(timed(schedule))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"model: {args.model}; machine: {machine()}")
    print(f"one {args.steps}-step image with CFG, median of {args.repeats} interleaved repeats"
          f" (telemetry {'on' if args.telemetry else 'off'}):")
    for name, value in median.items():
        print(f"  {name:<15} {value:.3f} s")
    overhead = median["all computed"] / median["unhooked"]
    print(f"overhead, every cell computed: {overhead:.3f}x the unhooked time (target <= 1.03)")
    print("| budget | ideal | LayerCache wall× | of ideal | velocity steps wall× | of ideal | MeanCache wall× "
          "| of ideal |")
    print("|---|---|---|---|---|---|---|---|")
    for budget in budgets:
        row = [f"{budget:g}", f"{1 / schedules[f'layercache {budget}'].compute_fraction:.2f}×"]
        for method in ("layercache", "velocity", "meancache"):
            schedule = schedules[f"{method} {budget}"]
            realized = median["unhooked"] / median[f"{method} {budget}"]
            row += [f"{realized:.2f}×", f"{realized * schedule.compute_fraction:.2f}"]
        print("| " + " | ".join(row) + " |")
