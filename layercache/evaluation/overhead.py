"""Cost of the machinery on the bundled model, timed interleaved in one process (median of repeats).

    python -m layercache overhead [--model tiny] [--repeats 7] [--budgets 0.7,0.5,0.35,0.25,0.2] [--steps 50]

Prints: hooked-but-all-computed time / unhooked time (target <= 1.03), and at each budget the realized
wall-clock speed-up of LayerCache (`planner.plan`: reused steps reuse the groups' residuals), of LayerCache with
velocity steps (`plan(..., objective="outputs", velocity=True)`: a reused step calls nothing) and of MeanCache (same
calibration) against the ideal one, 1 / executed compute fraction (target: LayerCache within 10% of ideal and not
below MeanCache by more than noise), and of LayerCache with the floor charged (`plan(..., reused_call_cost=c)`, c
timed here first: fewer blocks, so that blocks and reused calls fit the budget) against 1 / budget, and of the
hybrid plans (`plan(..., hybrid=rule)`: LayerCache's steps, some reused steps velocity steps). Then what one
transformer call costs (median over the calls of one image at the lowest budget): a computed call, a call whose
groups are all reused from their residuals, a velocity call, and the transformer with its blocks swapped for
pass-throughs and their inputs (text embedder, rotary positions) not run: its latent and timestep embeddings and
output layer, the floor of residual reuse, which no hook can remove (a reused call needs them to turn the predicted
stream into a velocity).
"""

import contextlib
import statistics
import time

import torch
from diffusers.hooks._helpers import TransformerBlockRegistry

from ..calibrate import Calibration
from ..groups import find_blocks, model_spec
from ..meancache import meancache_schedule
from ..methods import LayerCacheSetting, MeanCacheSetting, Uncached
from ..models.registry import get_entry, load_pipeline, shipped_calibration
from ..planner import HYBRIDS, plan
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


class _Memo(torch.nn.Module):
    """A block input that runs once and then returns that output: what a reused call costs of it (nothing)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.output = module, None

    def forward(self, *args, **kwargs):
        if self.output is None:
            self.output = self.module(*args, **kwargs)
        return self.output


class _PassThrough(torch.nn.Module):
    """A block that returns its inputs, in its block's output order."""

    def __init__(self, block):
        super().__init__()
        self.meta = TransformerBlockRegistry.get(type(block))

    def forward(self, *args, **kwargs):
        output = [None, None]
        for name, index in (("hidden_states", self.meta.return_hidden_states_index),
                            ("encoder_hidden_states", self.meta.return_encoder_hidden_states_index)):
            if index is not None:
                output[index] = self.meta._get_parameter_from_args_kwargs(name, args, kwargs)
        return tuple(output)


@contextlib.contextmanager
def blocks_removed(transformer):
    """The transformer with every block swapped for a pass-through and the blocks' inputs (`MODEL_SPECS`) run only
    once, restored on exit: the floor of a call that reuses every group (`hooks.BlockInputHook`)."""
    swapped = [(name, block, _PassThrough(block)) for name, block in find_blocks(transformer)]
    swapped += [(name, transformer.get_submodule(name), _Memo(transformer.get_submodule(name)))
                for name in model_spec(transformer)["block_inputs"]]
    try:
        for name, _, stand_in in swapped:
            transformer.set_submodule(name, stand_in)
        yield
    finally:
        for name, module, _ in swapped:
            transformer.set_submodule(name, module)


def call_times(pipe, steps: int) -> list[float]:
    """Wall time of every transformer call of one generation, in order (torch hooks around the hooked forward)."""
    times, handles = [], []
    handles.append(pipe.transformer.register_forward_pre_hook(lambda m, a: times.append(time.perf_counter())))
    handles.append(pipe.transformer.register_forward_hook(lambda m, a, o: times.append(time.perf_counter()
                                                                                         - times.pop())))
    try:
        pipe(label=[7], num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt")
    finally:
        for handle in handles:
            handle.remove()
    return times


def timed_calls(pipe, schedule, steps: int) -> dict:
    """One image under `schedule`: the wall time of each transformer call after the first (which also builds the
    caches), by kind: "computed", "reused (residuals)" (every group reused) or "velocity"."""
    cache = LayerCacheSetting(schedule)
    cache.attach(pipe, telemetry=False)
    try:
        times = call_times(pipe, steps)
    finally:
        cache.detach(pipe)
    per_step, found = len(times) // steps, {}
    for i, row in enumerate(schedule.cells[1:], start=1):
        kind = ("computed" if any(c.compute for c in row) else
                "velocity" if i in schedule.velocity_steps else "reused (residuals)")
        found.setdefault(kind, []).extend(times[i * per_step:(i + 1) * per_step])
    return found


def reused_call_cost(pipe, cal: Calibration, repeats: int = 3) -> float:
    """A call whose groups are all reused, as a fraction of a computed call (medians over `repeats` images of
    `plan(cal, 0.5)`), to three decimals: what `plan(..., reused_call_cost=)` charges on this model and machine."""
    schedule, found = plan(cal, 0.5), {}
    timed_calls(pipe, schedule, cal.num_steps)   # warm-up
    for _ in range(repeats):
        for kind, values in timed_calls(pipe, schedule, cal.num_steps).items():
            found.setdefault(kind, []).extend(values)
    return round(statistics.median(found["reused (residuals)"]) / statistics.median(found["computed"]), 3)


def call_costs(pipe, schedules: dict, budget: float, steps: int, repeats: int) -> dict:
    """Median ms of a computed call, a fully residual-reused call, a velocity call and a call without blocks."""
    found = {"computed": [], "reused (residuals)": [], "velocity": [], "the floor": []}
    for _ in range(repeats):
        for method in ("layercache", "velocity"):
            for kind, values in timed_calls(pipe, schedules[f"{method} {budget}"], steps).items():
                found[kind] += values
        with blocks_removed(pipe.transformer):
            times = call_times(pipe, steps)
            found["the floor"] += times[len(times) // steps:]
    return {kind: 1e3 * statistics.median(values) for kind, values in found.items() if values}


def run(args):
    budgets = validate(args)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration(args.model, args.steps, 4))
    schedules = {"all computed": plan(cal, 1.0)}
    charge = reused_call_cost(pipe, cal)
    for budget in budgets:
        schedules[f"layercache {budget}"] = plan(cal, budget)
        schedules[f"charged {budget}"] = plan(cal, budget, reused_call_cost=charge)
        schedules[f"velocity {budget}"] = plan(cal, budget, objective="outputs", velocity=True)
        schedules[f"meancache {budget}"] = meancache_schedule(cal, budget)
        for rule in HYBRIDS:
            schedules[f"hybrid {rule} {budget}"] = plan(cal, budget, hybrid=rule)

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
    print(f"a fully reused call costs {charge:g} of a computed one (charged below)")
    print("| budget | ideal | LayerCache wall× | of ideal | velocity steps wall× | of ideal | MeanCache wall× "
          "| of ideal | floor charged: compute | wall× | of 1 / budget |"
          + "".join(f" hybrid {rule} wall× | of ideal |" for rule in HYBRIDS))
    print("|---" * (11 + 2 * len(HYBRIDS)) + "|")
    for budget in budgets:
        row = [f"{budget:g}", f"{1 / schedules[f'layercache {budget}'].compute_fraction:.2f}×"]
        for method in ("layercache", "velocity", "meancache"):
            schedule = schedules[f"{method} {budget}"]
            realized = median["unhooked"] / median[f"{method} {budget}"]
            row += [f"{realized:.2f}×", f"{realized * schedule.compute_fraction:.2f}"]
        realized, charged = median["unhooked"] / median[f"charged {budget}"], schedules[f"charged {budget}"]
        row += [f"{charged.compute_fraction:.2f}", f"{realized:.2f}×", f"{realized * budget:.2f}"]
        for rule in HYBRIDS:
            realized = median["unhooked"] / median[f"hybrid {rule} {budget}"]
            row += [f"{realized:.2f}×", f"{realized * schedules[f'hybrid {rule} {budget}'].compute_fraction:.2f}"]
        print("| " + " | ".join(row) + " |")
    budget = min(budgets)
    print(f"one transformer call at budget {budget:g}, median over {args.repeats} images (ms):")
    for kind, ms in call_costs(pipe, schedules, budget, args.steps, args.repeats).items():
        print(f"  {kind:<22} {ms:.2f}")
