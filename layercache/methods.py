"""Every cache method behind one interface: the app's cached lane, the lockstep runner and the benchmark attach
them all the same way (docs/design.md, "Cache methods").

Two layers:

- A **cache** is one method at one setting, ready for a run: `attach(pipe, telemetry=False)` (returns the
  `Telemetry` where the method records one, else None), `detach(pipe)`, what it planned (`planned_fraction`,
  `num_inference_steps`), its group layout (`group_starts`, None where the method has no groups of its own) and
  its settings (`params`, reported by the benchmark). Four kinds: `LayerCacheSetting(schedule)`,
  `MeanCacheSetting(schedule)`, `DiffusersCacheSetting(config)` and `Uncached()`.
- A **method** is a registry entry: `key` (command line, results), `label` (the app's dropdown; None where the app
  does not offer it), `summary`, capabilities (`uses_k`, `uses_threshold`, `in_benchmark`) and
  `prepare(ctx, budget) -> cache`, which turns a budget into a cache. Each method is defined once, here or (the
  peers only the benchmark runs) in `evaluation/baselines.py`.

`ctx` is what the caller supplies: the app's workbench (`studio/workbench.py`) or the benchmark's `BenchContext`
(`evaluation/baselines.py`). It has `num_steps`, `num_groups`, `max_k` (None: the calibration's), `check_all`
(are LayerCache's variants checked end to end too, or only the main method), `tunes` (are free settings tuned on
the calibration calls), `reused_call_cost` (what LayerCache's plans charge per fully reused call), and
`calibration(groups)`, `verified_plan(cal, budget, **options)`, `tune(caches)`, `fbc_threshold(budget) -> (threshold,
params)`.
"""

from dataclasses import dataclass
from typing import Callable

from .planner import check_budget, plan


class Cache:
    """One method at one setting; the base class is also the uncached sampler (attaches nothing)."""

    def __init__(self, method: str, budget: float | None = None, num_inference_steps: int | None = None,
                 planned_fraction: float | None = None, params: dict | None = None):
        self.method, self.budget = method, budget
        self.num_inference_steps = num_inference_steps   # None: the caller's step count
        self.planned_fraction = planned_fraction         # None where a threshold decides at run time
        self.params = dict(params or {})

    @property
    def label(self) -> str:
        entry = METHODS.get(self.method)
        return entry.label if entry is not None and entry.label else self.method

    @property
    def group_starts(self):
        return None

    def attach(self, pipe, telemetry: bool = False):
        return None

    def detach(self, pipe) -> None:
        pass


class Uncached(Cache):
    """No cache, optionally with fewer steps than the caller's."""

    def __init__(self, num_inference_steps: int | None = None, method: str = "no cache", budget=None,
                 planned_fraction=None, params=None):
        super().__init__(method, budget, num_inference_steps, planned_fraction, params)


class LayerCacheSetting(Cache):
    """LayerCache following a Schedule (hooks.apply_layer_cache)."""

    def __init__(self, schedule, method: str = "layercache", budget=None, params=None):
        chosen = sorted({c.encode() for row in schedule.cells for c in row if not c.compute})
        found = {"reuse_cells": chosen, "reuse": schedule.reuse}
        if "verified" in schedule.meta:   # which candidate plan won on the calibration calls
            verified = schedule.meta["verified"]
            found["verified"] = verified["chosen"]
            if "rechecked_error" in verified:   # the finalists' errors over every image, recheck included
                found["rechecked"] = {name: round(error, 4) for name, error in verified["rechecked_error"].items()}
        super().__init__(method, budget, schedule.num_steps, schedule.compute_fraction, {**found, **(params or {})})
        self.schedule = schedule

    @property
    def group_starts(self):
        return self.schedule.group_starts

    def attach(self, pipe, telemetry: bool = False):
        from .hooks import LayerCacheConfig, apply_layer_cache
        return apply_layer_cache(pipe.transformer, LayerCacheConfig(self.schedule, telemetry=telemetry))

    def detach(self, pipe) -> None:
        from .hooks import remove_layer_cache
        remove_layer_cache(pipe.transformer)


class MeanCacheSetting(Cache):
    """Whole-model MeanCache following its one-group Schedule (meancache.apply_meancache): a cached step runs no
    block at all."""

    def __init__(self, schedule, method: str = "meancache", budget=None, params=None):
        found = {"computed_steps": schedule.meta.get("computed_steps"), "gamma": schedule.meta.get("gamma"),
                 "k": sorted({row[0].k for row in schedule.cells if not row[0].compute})}
        super().__init__(method, budget, schedule.num_steps, schedule.compute_fraction, {**found, **(params or {})})
        self.schedule = schedule

    def attach(self, pipe, telemetry: bool = False):
        from .meancache import apply_meancache
        apply_meancache(pipe.transformer, self.schedule)

    def detach(self, pipe) -> None:
        from .meancache import remove_meancache
        remove_meancache(pipe.transformer)


class DiffusersCacheSetting(Cache):
    """A cache built into diffusers, e.g. FirstBlockCacheConfig(threshold=0.05), through `enable_cache`."""

    def __init__(self, config, method: str, budget=None, planned_fraction=None, params=None):
        super().__init__(method, budget, None, planned_fraction, params)
        self.config = config

    def attach(self, pipe, telemetry: bool = False):
        pipe.transformer.enable_cache(self.config)

    def detach(self, pipe) -> None:
        pipe.transformer.disable_cache()


@dataclass(frozen=True)
class Method:
    key: str
    summary: str
    prepare: Callable          # prepare(ctx, budget) -> Cache
    label: str | None = None   # the app's name for it; None: the app does not offer it
    uses_k: bool = False       # does the largest-K setting change it?
    uses_threshold: bool = False   # driven by a threshold (the app's slider) rather than by the budget
    in_benchmark: bool = True


def prepare(method: Method, ctx, budget: float) -> Cache:
    """`method.prepare(ctx, budget)` with the budget checked and the caller's step count filled in."""
    cache = method.prepare(ctx, check_budget(budget))
    if cache.num_inference_steps is None:
        cache.num_inference_steps = ctx.num_steps
    return cache


def _planned(ctx, groups: int, budget: float, checked: bool, **options):
    """LayerCache's plan on the calibration for `groups` groups: checked end to end (`plan_verified`) or not."""
    cal = ctx.calibration(groups)
    options["reused_call_cost"] = ctx.reused_call_cost
    return ctx.verified_plan(cal, budget, **options) if checked else plan(cal, budget, **options)


def _max_k(ctx) -> dict:
    return {} if ctx.max_k is None else {"max_k": ctx.max_k}


def _layercache(ctx, budget):
    return LayerCacheSetting(_planned(ctx, ctx.num_groups, budget, True, **_max_k(ctx)), "layercache", budget)


def _layercache_groups(ctx, budget):
    return LayerCacheSetting(_planned(ctx, ctx.num_groups, budget, False, allocation="groups", max_k=ctx.max_k),
                             "layercache-groups", budget)


def _layercache_steps(ctx, budget):
    return LayerCacheSetting(_planned(ctx, ctx.num_groups, budget, False, max_k=ctx.max_k), "layercache-steps", budget)


def _layercache_k1(ctx, budget):
    schedule = _planned(ctx, ctx.num_groups, budget, ctx.check_all, max_k=1, predictors=("slope",))
    return LayerCacheSetting(schedule, "layercache-k1", budget)


def _layercache_g1(ctx, budget):
    return LayerCacheSetting(_planned(ctx, 1, budget, True, **_max_k(ctx)), "layercache-g1", budget)


def _meancache(ctx, budget):
    """MeanCache's step-cost exponent γ: tuned per cell on the calibration calls (2 or 1) where the caller tunes,
    else MeanCache's 2."""
    from .meancache import meancache_schedule

    cal = ctx.calibration(ctx.num_groups)
    caches = [MeanCacheSetting(meancache_schedule(cal, budget, gamma=gamma), "meancache", budget)
              for gamma in ((2.0, 1.0) if ctx.tunes else (2.0,))]
    return ctx.tune(caches) if ctx.tunes else caches[0]


def _fbcache(ctx, budget):
    """FirstBlockCache skips the rest of the stack when the first block's residual changed by less than a
    threshold: the app takes it from its slider, the benchmark finds the one that meets the budget on a
    calibration input (`BenchContext.fbc_threshold`). Compute is known only after the run."""
    from diffusers import FirstBlockCacheConfig

    threshold, params = ctx.fbc_threshold(budget)
    return DiffusersCacheSetting(FirstBlockCacheConfig(threshold=threshold), "fbcache", budget, None, params)


METHODS = {m.key: m for m in [
    Method("layercache", "(step, group, K) plan checked end to end, 4 groups", _layercache, "LayerCache",
           uses_k=True),
    Method("layercache-groups", "each group on its own steps (the per-group optimum of the error model)",
           _layercache_groups, "LayerCache, per group", uses_k=True, in_benchmark=False),
    Method("layercache-steps", "all groups on the same steps (the whole-step optimum of the error model), to compare "
           "with layercache-groups at matched compute", _layercache_steps, uses_k=True, in_benchmark=False),
    Method("layercache-k1", "ablation: K fixed to 1 (no JVP)", _layercache_k1, "LayerCache, K=1 (no JVP)"),
    Method("layercache-g1", "ablation: a single group", _layercache_g1),
    Method("meancache", "whole-model MeanCache, DP schedule", _meancache, "MeanCache"),
    Method("fbcache", "diffusers FirstBlockCache", _fbcache, "FirstBlockCache (diffusers)", uses_threshold=True),
]}


def app_methods() -> dict:
    """label -> Method, for the methods the app offers, in registry order."""
    return {m.label: m for m in METHODS.values() if m.label}


def by_label(label: str) -> Method:
    found = app_methods().get(label)
    if found is None:
        raise ValueError(f"unknown method {label!r}; choose one of: {', '.join(app_methods())}")
    return found
