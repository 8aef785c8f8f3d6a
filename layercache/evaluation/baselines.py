"""The benchmark's methods: the library's (layercache.methods) and the peers only the benchmark runs, each a
`methods.Method` that turns (benchmark context, budget) into a cache (`methods.Cache`, the benchmark's operating
point): how to attach it to the pipeline, how to detach it, how many steps to run, and what compute it planned.
`BenchContext` is the context those methods ask for calibrations, checked plans and tuning. What it *realized* is
measured, never taken from the plan: `metrics.BlockCounter` counts the multiply-adds of every Linear layer inside the
transformer blocks that actually ran (a superset of counting `attn.to_q` calls, which stays right for
caches that skip only part of a block), relative to the uncached run on the same inputs.

Budget b = fraction of block compute to execute. Methods that plan their compute hit b (to one cell or
one step; ties go to *more* compute for the peer). Methods driven by a threshold are mapped to b as
their own rules allow, each explained where it is built; the realized fraction is what gets reported.

Methods (names as on the command line):
  layercache          plan over (step, group, K), 4 groups, per-group or whole-step, checked end to end
  layercache-k1       ablation: K fixed to 1 (plain reuse, no JVP)
  layercache-g1       ablation: one group (the whole block stack decided per step)
  layercache-uniform  ablation: no planner; every group reused on the same evenly spread steps,
                      each reused cell with its calibrated best (predictor, K)
  meancache           whole model: a cached step calls no block; û = v_last − Δσ·J (MeanCache's
                      estimator on transformer outputs), schedule by DP with exactly B computed steps (γ tuned)
  fbcache             diffusers FirstBlockCacheConfig (threshold searched on calibration inputs)
  taylorseer          diffusers TaylorSeerCacheConfig on whole blocks (interval, warm-up, order tuned)
  magcache            diffusers MagCacheConfig, ratios calibrated on the model with its calibrate mode
  fewer-steps         the uncached sampler with round(N·b) steps
  fixed-interval      every group recomputed every I_g steps and plainly reused in between

Every free setting (LayerCache's plan, MeanCache's γ, TaylorSeer's interval/warm-up/order) is chosen per
(steps, budget) cell by the images on both calibration calls, scored by `planner.output_error` (the mean
per-image log error, what a mean PSNR averages): `tune`, `plan_verified`.

Not applicable to QwenImageTransformer2DModel under Qwen-style CFG (separate "cond"/"uncond" calls):
  - PyramidAttentionBroadcast keeps ONE state per attention module (`self.state`, not per cache
    context), so with separate cond/uncond calls its iteration counter alternates between branches and
    the uncond call reuses the cond branch's attention output: it silently breaks guidance. It also needs
    `pipe.current_timestep`, which these pipelines' loops do not maintain for it.
  - FasterCache assumes batched CFG (it splits the batch into uncond/cond halves) and video tensors
    (BCFHW/BFCHW); its per-module state is also not per cache context. Neither holds here.
"""

import contextlib
import io
import math
import re
from typing import Callable

import numpy as np
import torch

from ..calibrate import Calibration, calibrate, call_kwargs
from ..methods import METHODS as LIBRARY
from ..methods import Cache, DiffusersCacheSetting, LayerCacheSetting, Method, Uncached
from ..methods import prepare as prepare_cache
from ..planner import (
    output_error,
    plan_verified,
    recheck,
    reference_outputs,
    regular_patterns,
    regular_steps,
    schedule_from_mask,
    steps_for,
)
from ..schedule import Schedule
from .metrics import BlockCounter

# ---------------------------------------------------------------- the interface

class BenchContext:
    """What the methods share for one model and step count: the pipeline, calibrations (loaded from
    `calibrations` {groups: Calibration or path} or computed on `calibration_calls`) and tuning results; the
    context `methods.Method.prepare` asks for (see layercache/methods.py). Every LayerCache variant is checked end
    to end and every free setting tuned, so that each ablation changes one thing only."""

    num_groups = 4      # LayerCache, its K=1 ablation and MeanCache
    max_k = None        # the calibration's largest K
    reused_call_cost = 0.0   # what LayerCache's plans charge per fully reused call (`planner.block_budget`)
    check_all = True
    tunes = True

    def __init__(self, pipe, num_steps: int, calibration_calls: list, calibrations: dict | None = None,
                 log: Callable = lambda message: None, fbc_thresholds=None, recheck_calls=None):
        self.pipe, self.num_steps, self.calibration_calls = pipe, num_steps, calibration_calls
        # plans and peers' settings are checked end to end on all of them: on one call of ten images the choice
        # among settings within ~1 dB of each other did not carry over to the evaluation seeds
        self.tuning_calls = calibration_calls
        # every tuned method's few best settings run again on these before it chooses (planner.RECHECK_FINALISTS)
        self.recheck_calls = list(recheck_calls or [])
        self.fbc_thresholds = tuple(fbc_thresholds or FBC_THRESHOLDS)
        self._calibrations = dict(calibrations or {})
        self._cache: dict = {}
        self.log = log
        self.notes: list[str] = []

    def calibration(self, groups: int) -> Calibration:
        found = self._calibrations.get(groups)
        if isinstance(found, Calibration):
            return found
        if found is not None:
            cal = Calibration.load(found)
        else:
            self.log(f"calibrating {groups} group(s) at {self.num_steps} steps (no shipped calibration)")
            self.notes.append(f"{groups}-group calibration computed in-process on the calibration set")
            cal = calibrate(self.pipe, self.calibration_calls, self.num_steps, num_groups=groups)
        cal.check_fits(self.pipe.transformer, self.num_steps)
        self._calibrations[groups] = cal
        return cal

    def memo(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def references(self) -> tuple[list, list]:
        """The uncached images on the tuning calls and on the recheck calls."""
        return (self.memo("reference outputs", lambda: reference_outputs(self.pipe, self.tuning_calls, self.num_steps)),
                self.memo("recheck outputs", lambda: reference_outputs(self.pipe, self.recheck_calls, self.num_steps)))

    def verified_plan(self, cal: Calibration, budget: float, **options) -> Schedule:
        reference, recheck_reference = self.references()
        return plan_verified(self.pipe, cal, budget, self.tuning_calls, reference=reference,
                             recheck_calls=self.recheck_calls, recheck_reference=recheck_reference, **options)

    def tune(self, caches: list) -> Cache:
        return tune(self, caches)

    def fbc_threshold(self, budget: float) -> tuple[float, dict]:
        """FirstBlockCache's threshold for `budget`: interpolated (log scale) in a sweep measured on a calibration
        input; the realized fraction on the evaluation inputs is reported. The first block always runs, so b <
        1/12 is out of its reach on the bundled model."""
        sweep = self.memo("fbc_sweep", lambda: _fbc_sweep(self))
        threshold = _interpolate_threshold(sweep, budget)
        return threshold, {"threshold": threshold, "tuning_fraction": dict(sweep).get(threshold)}

    def run_tuning(self) -> int:
        """One uncached-settings run on the first calibration call (never evaluation inputs); returns MACs."""
        with BlockCounter(self.pipe.transformer) as counter:
            self.pipe(**call_kwargs(self.calibration_calls[0]), num_inference_steps=self.num_steps,
                      output_type="latent")
        return counter.macs


# ---------------------------------------------------------------- LayerCache and its ablations

def _grid_schedule(cal: Calibration, compute: np.ndarray, pick_k: bool, meta: dict) -> Schedule:
    """A Schedule from a (N, G) compute mask; reused cells get the calibrated best candidate at their
    horizon (pick_k) or plain reuse."""
    return schedule_from_mask(cal, compute, meta, None if pick_k else [("slope", 1)])


def _free_steps(n, protect_first=2, protect_last=1):
    return list(range(min(protect_first, n), max(n - protect_last, 0)))


def _layercache_uniform(ctx, budget):
    """Steps 0, 1 and the last computed; R = round(N(1−b)) reused steps spread evenly over the rest."""
    cal = ctx.calibration(4)
    free = _free_steps(cal.num_steps)
    reused = min(len(free), steps_for(1 - budget, cal.num_steps) if budget < 1 else 0)
    compute = np.ones((cal.num_steps, cal.num_groups), dtype=bool)
    for j in range(reused):  # the j-th of R points spread over the free steps
        compute[free[int((j + 0.5) * len(free) / reused)]] = False
    meta = {"method": "layercache-uniform", "budget": budget}
    return LayerCacheSetting(_grid_schedule(cal, compute, True, meta), "layercache-uniform", budget)


def _fixed_interval(ctx, budget):
    """Group g is recomputed every I_g steps (steps 0, 1 and the last always), plainly reused in between.
    I_g is ⌊1/b⌋ or ⌊1/b⌋ + 1; the number of groups given the longer one (shallowest first) is the one whose
    compute lands nearest b."""
    cal = ctx.calibration(4)
    n, g_count = cal.num_steps, cal.num_groups
    short = max(1, math.floor(1 / budget))
    long = short + 1
    best = None
    for m in range(g_count + 1):
        intervals = [long] * m + [short] * (g_count - m)
        compute = np.ones((n, g_count), dtype=bool)
        for i in _free_steps(n):
            compute[i] = [i % interval == 0 for interval in intervals]
        fraction = float((compute * np.asarray(cal.group_costs)).sum() / n)
        if best is None or abs(fraction - budget) < abs(best[0] - budget) - 1e-12:
            best = (fraction, compute, intervals)
    meta = {"method": "fixed-interval", "budget": budget, "intervals": best[2]}
    return LayerCacheSetting(_grid_schedule(cal, best[1], False, meta), "fixed-interval", budget,
                             {"intervals": best[2]})


# ---------------------------------------------------------------- tuning

# A tuned point's settings that say how it predicts the steps it skips or how it chose its steps, not which steps
# it computes (MeanCache's γ and spans, TaylorSeer's order), and what tuning adds
NOT_WHAT_IT_COMPUTES = ("gamma", "k", "max_order", "calibration_error", "rechecked_error", "tuned_over")


def computes(params: dict) -> str:
    """A point's family for `planner.recheck`, from its `params`: its settings but those in NOT_WHAT_IT_COMPUTES."""
    return str(sorted((k, str(v)) for k, v in params.items() if k not in NOT_WHAT_IT_COMPUTES))


def tune(ctx, points: list) -> Cache:
    """The operating point whose images on the calibration calls are closest to the uncached ones:
    how every peer with a free setting is tuned, per (steps, budget) cell, never on evaluation inputs. With recheck
    calls, the best point of each of the RECHECK_FINALISTS best families (points that compute the same steps:
    `computes`) runs on them too and the one of least error on them is kept, as `plan_verified` does for
    LayerCache (`planner.recheck`)."""
    reference, recheck_reference = ctx.references()

    def error_on(point, calls, on_reference) -> float:
        point.attach(ctx.pipe)
        try:
            outputs = reference_outputs(ctx.pipe, calls, point.num_inference_steps or ctx.num_steps)
        finally:
            point.detach(ctx.pipe)
        return output_error(outputs, on_reference)

    for point in points:
        point.params["calibration_error"] = error_on(point, ctx.tuning_calls, reference)
    ranked = sorted(points, key=lambda p: p.params["calibration_error"])   # stable: ties keep the first
    best = ranked[0]
    if ctx.recheck_calls:
        rechecked = recheck(ranked, lambda p: error_on(p, ctx.recheck_calls, recheck_reference),
                            lambda p: computes(p.params))
        for point, error in rechecked.items():
            point.params["rechecked_error"] = error
        best = min(rechecked, key=rechecked.get)
    best.params["tuned_over"] = len(points)
    return best


# ---------------------------------------------------------------- diffusers peers

FBC_THRESHOLDS = tuple(float(t) for t in np.geomspace(0.01, 1.5, 10))


def _fbc_sweep(ctx) -> list[tuple[float, float]]:
    """(threshold, realized compute fraction) on the first calibration call, for a grid of thresholds."""
    from diffusers import FirstBlockCacheConfig

    reference = ctx.run_tuning()
    sweep = []
    for threshold in ctx.fbc_thresholds:
        ctx.pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        try:
            sweep.append((threshold, ctx.run_tuning() / reference))
        finally:
            ctx.pipe.transformer.disable_cache()
        ctx.log(f"fbcache threshold {threshold:.4f}: compute {sweep[-1][1]:.3f} (calibration inputs)")
    return sweep


def _interpolate_threshold(sweep, budget: float) -> float:
    """Threshold at which the measured fraction crosses `budget` (fractions fall as thresholds grow)."""
    points = sorted(sweep)
    for (t0, f0), (t1, f1) in zip(points, points[1:]):
        if f0 >= budget >= f1 and f0 > f1:
            w = (f0 - budget) / (f0 - f1)
            return float(math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0))))
    return min(points, key=lambda p: abs(p[1] - budget))[0]


def magcache_ratios(ctx) -> list[float]:
    """MagCache's own calibration mode on the calibration inputs: it prints one ratio list per run and
    CFG branch; we read them off and average them."""
    from diffusers import MagCacheConfig

    printed = io.StringIO()
    ctx.pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=ctx.num_steps))
    try:
        with contextlib.redirect_stdout(printed):
            for call in ctx.calibration_calls:
                ctx.pipe(**call_kwargs(call), num_inference_steps=ctx.num_steps, output_type="latent")
    finally:
        ctx.pipe.transformer.disable_cache()
    lists = [[float(x) for x in m.split(",")] for m in re.findall(r"^\[([^\]]*)\]$", printed.getvalue(), re.M)]
    lists = [r for r in lists if len(r) == ctx.num_steps]
    if not lists:
        raise ValueError("MagCache calibration printed no ratios; the diffusers MagCache API may have changed")
    return np.mean(lists, axis=0).tolist()


def magcache_computed_steps(ratios, threshold, max_skip_steps, retention_ratio, num_steps) -> int:
    """How many steps diffusers' MagCache computes: its decisions depend only on the ratios and
    settings, never on the run's data, so they can be replayed here exactly (mirrors MagCacheHeadHook)."""
    retention_step = int(retention_ratio * num_steps + 0.5)
    acc_ratio, acc_steps, acc_err, computed = 1.0, 0, 0.0, 0
    for step in range(num_steps):
        compute = True
        if step >= retention_step:
            acc_ratio *= ratios[step]
            acc_steps += 1
            acc_err += abs(1.0 - acc_ratio)
            if computed > 0 and acc_err <= threshold and acc_steps <= max_skip_steps:
                compute = False
            else:
                acc_ratio, acc_steps, acc_err = 1.0, 0, 0.0
        computed += compute
    return computed


def _magcache(ctx, budget):
    """Threshold found by bisection so MagCache computes round(N·b) steps, with diffusers' defaults
    (retention 0.2, at most 3 skips in a row); where those cannot reach b, max_skip_steps is raised
    to the smallest value that can."""
    from diffusers import MagCacheConfig

    ratios = ctx.memo("mag_ratios", lambda: magcache_ratios(ctx))
    n, target, retention = ctx.num_steps, steps_for(budget, ctx.num_steps), 0.2
    max_skip = 3
    while magcache_computed_steps(ratios, 1e9, max_skip, retention, n) > target and max_skip < n:
        max_skip += 1
    lo, hi, best = -12.0, 6.0, None           # log10 threshold
    for _ in range(60):
        mid = (lo + hi) / 2
        count = magcache_computed_steps(ratios, 10 ** mid, max_skip, retention, n)
        if best is None or abs(count - target) < abs(best[1] - target) or \
                (abs(count - target) == abs(best[1] - target) and count > best[1]):
            best = (10 ** mid, count)
        lo, hi = (mid, hi) if count > target else (lo, mid)
    threshold, count = best
    config = MagCacheConfig(threshold=threshold, max_skip_steps=max_skip, retention_ratio=retention,
                            num_inference_steps=n, mag_ratios=ratios)
    return DiffusersCacheSetting(config, "magcache", budget, count / n,
                                 {"threshold": threshold, "max_skip_steps": max_skip, "retention_ratio": retention})


def taylorseer_computed_steps(interval: int, warmup: int, num_steps: int) -> int:
    """Steps diffusers' TaylorSeer computes (TaylorSeerCacheHook._measure_should_compute's pattern)."""
    return len(regular_steps(interval, warmup, num_steps))


def _taylorseer(ctx, budget):
    """TaylorSeer (fp32 factors) on every whole block, so a predicted step runs no block. It computes the first
    `warm-up` steps, then one step in `interval`. Tuned per cell on the calibration calls: of the (interval,
    warm-up) pairs that compute round(N·b) steps (up to three, most frequent refresh first), each with Taylor
    order 1 and 2, the one closest to the uncached latents."""
    from diffusers import TaylorSeerCacheConfig

    n = ctx.num_steps
    points = []
    for interval, warmup in regular_patterns(n, budget):
        for order in (1, 2):
            config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, max_order=order,
                                           taylor_factors_dtype=torch.float32,
                                           cache_identifiers=[r"transformer_blocks\.\d+",   # FLUX: both kinds
                                                              r"single_transformer_blocks\.\d+"])
            planned = taylorseer_computed_steps(interval, warmup, n) / n
            points.append(DiffusersCacheSetting(config, "taylorseer", budget, planned,
                                                {"cache_interval": interval, "disable_cache_before_step": warmup,
                                                 "max_order": order}))
    return tune(ctx, points)


# ---------------------------------------------------------------- trivial baselines

def _fewer_steps(ctx, budget):
    steps = steps_for(budget, ctx.num_steps)
    return Uncached(steps, "fewer-steps", budget, steps / ctx.num_steps, {"steps": steps})


PEERS = {m.key: m for m in [
    Method("layercache-uniform", "ablation: evenly spread reuse, no planner", _layercache_uniform),
    Method("taylorseer", "diffusers TaylorSeer (whole blocks)", _taylorseer),
    Method("magcache", "diffusers MagCache (calibrated ratios)", _magcache),
    Method("fewer-steps", "uncached with round(N·b) steps", _fewer_steps),
    Method("fixed-interval", "every group recomputed every I steps, plain reuse", _fixed_interval),
]}
_ORDER = ("layercache", "layercache-k1", "layercache-g1", "layercache-uniform", "meancache", "fbcache", "taylorseer",
          "magcache", "fewer-steps", "fixed-interval")
METHODS = {key: {**LIBRARY, **PEERS}[key] for key in _ORDER}   # the benchmark's methods ("all"), in its order
# also runnable when named: the library's comparison plans (per group vs whole steps at matched compute)
SELECTABLE = {**METHODS, **{key: m for key, m in LIBRARY.items() if key not in METHODS}}


def prepare(name: str, ctx: BenchContext, budget: float) -> Cache:
    if name not in SELECTABLE:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(SELECTABLE)}")
    return prepare_cache(SELECTABLE[name], ctx, budget)
