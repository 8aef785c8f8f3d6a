"""Baselines: MeanCache's DP is exact, MeanCache with every step computed is the uncached model bit for
bit, and every method runs on the bundled model and reports (and realizes) its compute."""

import itertools

import numpy as np
import pytest
import torch

from layercache.evaluation.baselines import (
    METHODS,
    BenchContext,
    magcache_computed_steps,
    prepare,
    taylorseer_computed_steps,
)
from layercache.evaluation.metrics import BlockCounter
from layercache.meancache import apply_meancache, meancache_costs, meancache_schedule, remove_meancache
from layercache.models.tiny.sets import eval_call
from layercache.planner import shortest_schedule, steps_for

STEPS = 6


def _brute_force(cost, b):
    n = cost.shape[0]
    best = np.inf
    for rest in itertools.combinations(range(1, n), b - 1):
        path = [0, *rest]
        best = min(best, sum(cost[a, c] for a, c in zip(path, path[1:] + [n])))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_dp_takes_exactly_b_steps_and_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n = 7
    cost = np.full((n, n + 1), np.inf)
    for a in range(n):
        for c in range(a + 1, n + 1):
            cost[a, c] = 0.0 if c == a + 1 else rng.random() * (c - a) ** 2
    for b in range(1, n + 1):
        steps = shortest_schedule(cost, b)
        assert len(steps) == b and steps[0] == 0 and steps == sorted(set(steps))
        total = sum(cost[a, c] for a, c in zip(steps, steps[1:] + [n]))
        assert total == pytest.approx(_brute_force(cost, b))


def test_dp_rejects_impossible_budgets():
    cost = np.zeros((4, 5))
    for b in (0, 5):
        with pytest.raises(ValueError, match="computed steps"):
            shortest_schedule(cost, b)


def test_meancache_costs_are_zero_on_a_constant_trajectory():
    outputs = np.ones((2, 5, 3), dtype=np.float32)
    cost, _ = meancache_costs(outputs, [1.0, 0.8, 0.6, 0.4, 0.2])
    assert np.allclose(cost[np.isfinite(cost)], 0)


@pytest.fixture(scope="module")
def ctx(tiny_pipe):
    return BenchContext(tiny_pipe, STEPS, [{"label": [0, 3, 7], "seed": 1}], fbc_thresholds=(0.05, 0.2, 0.8))


def test_meancache_schedule_has_exactly_b_computed_steps(ctx):
    cal = ctx.calibration(4)
    for budget in (1.0, 0.5, 0.34):
        schedule = meancache_schedule(cal, budget)
        computed = [i for i, row in enumerate(schedule.cells) if row[0].compute]
        assert len(computed) == steps_for(budget, STEPS) == len(schedule.meta["computed_steps"])
        assert computed[0] == 0


def test_meancache_all_compute_is_bit_identical(tiny_pipe, ctx):
    call = eval_call([100, 101])
    reference = tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent").images
    apply_meancache(tiny_pipe.transformer, meancache_schedule(ctx.calibration(4), 1.0))
    try:
        cached = tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent").images
    finally:
        remove_meancache(tiny_pipe.transformer)
    assert torch.equal(cached, reference)


def test_velocity_steps_with_meancaches_estimator_are_meancache_exactly(tiny_pipe, ctx):
    """LayerCache's velocity steps on MeanCache's steps, with its estimator, are MeanCache to the bit, and
    call no block: a whole-step reuse costs what MeanCache's costs."""
    from layercache.groups import find_blocks
    from layercache.hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache
    from layercache.planner import plan

    cal, call = ctx.calibration(4), eval_call([100, 101])
    schedule = plan(cal, 0.5, objective="outputs", velocity=True)
    peer = meancache_schedule(cal, 0.5)
    assert schedule.velocity_steps == [i for i, row in enumerate(peer.cells) if not row[0].compute]
    apply_meancache(tiny_pipe.transformer, peer)
    try:
        expected = tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent").images
    finally:
        remove_meancache(tiny_pipe.transformer)
    apply_layer_cache(tiny_pipe.transformer, LayerCacheConfig(schedule, telemetry=False))
    try:   # reuse on velocity steps only: no block needs a hook
        assert not any(getattr(block, "_diffusers_hook", None) and block._diffusers_hook.get_hook("layercache_block")
                       for _, block in find_blocks(tiny_pipe.transformer))
        with BlockCounter(tiny_pipe.transformer) as counter:
            got = tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent").images
    finally:
        remove_layer_cache(tiny_pipe.transformer)
    assert torch.equal(got, expected)
    with BlockCounter(tiny_pipe.transformer) as full:
        tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent")
    assert counter.macs / full.macs == pytest.approx(schedule.compute_fraction, abs=1e-9)
    with pytest.raises(ValueError, match="whole steps"):
        plan(cal, 0.5, allocation="groups", velocity=True)


def test_hybrid_steps_take_every_other_reused_step_or_the_second_half_of_each_run():
    from layercache.planner import hybrid_steps

    computed = np.array([1, 0, 0, 0, 1, 0, 1, 0, 0], bool)   # runs of reused steps: 1-3, 5, 7-8
    assert hybrid_steps(computed, "alternate") == [1, 3, 7]
    assert hybrid_steps(computed, "late") == [2, 3, 5, 8]


@pytest.mark.parametrize("rule", ["alternate", "late"])
def test_a_hybrid_plan_calls_nothing_on_its_velocity_steps_and_reuses_residuals_on_the_others(tiny_pipe, ctx, rule):
    """A hybrid plan computes its residual plan's steps; on its velocity steps (`hybrid_steps`) it has the velocity
    plan's cells and calls no transformer, on its other reused steps the residual plan's cells; its blocks run at
    the plan's compute."""
    from layercache.hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache
    from layercache.planner import hybrid_steps, plan

    cal, call = ctx.calibration(4), eval_call([100, 101])
    residual, velocity, hybrid = plan(cal, 0.35), plan(cal, 0.35, velocity=True), plan(cal, 0.35, hybrid=rule)
    computed = np.array([row[0].compute for row in residual.cells])
    assert [row[0].compute for row in hybrid.cells] == computed.tolist()
    assert hybrid.velocity_steps == hybrid_steps(computed, rule)
    assert 0 < len(hybrid.velocity_steps) < (~computed).sum() and hybrid.meta["hybrid"] == rule
    assert all(row == (velocity if i in hybrid.velocity_steps else residual).cells[i]
               for i, row in enumerate(hybrid.cells))
    transformer_calls = []
    # the output layer runs once per transformer call that is not a velocity step (the model hook's `__call__` runs
    # on every step)
    handle = tiny_pipe.transformer.proj_out.register_forward_pre_hook(lambda *_: transformer_calls.append(1))
    apply_layer_cache(tiny_pipe.transformer, LayerCacheConfig(hybrid, telemetry=False))
    try:
        with BlockCounter(tiny_pipe.transformer) as counter:
            tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent")
    finally:
        remove_layer_cache(tiny_pipe.transformer)
    cached_calls = len(transformer_calls)
    try:
        with BlockCounter(tiny_pipe.transformer) as full:
            tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent")
    finally:
        handle.remove()
    calls_per_step = (len(transformer_calls) - cached_calls) / STEPS   # with guidance, two
    assert cached_calls == calls_per_step * (STEPS - len(hybrid.velocity_steps))
    assert counter.macs / full.macs == pytest.approx(hybrid.compute_fraction, abs=1e-9)
    for bad, message in (("every", "hybrid must be one of"), ("late", "whole-step plan")):
        with pytest.raises(ValueError, match=message):
            plan(cal, 0.35, hybrid=bad, velocity=bad == "late")
    with pytest.raises(ValueError, match="whole-step plan"):
        plan(cal, 0.35, allocation="groups", hybrid="late")


@pytest.mark.parametrize("key", ["tiny", "tiny-flux"])
@pytest.mark.parametrize("order", [1, 2])
def test_reusing_outputs_with_taylor_on_its_pattern_is_diffusers_taylorseer(tiny_pipe, key, order):
    """A plan on TaylorSeer's pattern with its expansion on the groups' outputs (`reuse="outputs"`) gives diffusers'
    TaylorSeer's latents to float rounding, at its compute; on the residuals (the fresh embedding added) it does not."""
    from diffusers import TaylorSeerCacheConfig

    from layercache.calibrate import Calibration
    from layercache.hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache
    from layercache.models.registry import load_pipeline, shipped_calibration
    from layercache.planner import plan

    pipe, steps, (interval, warmup) = tiny_pipe if key == "tiny" else load_pipeline(key), 10, (3, 1)
    pipe.set_progress_bar_config(disable=True)
    cal, call = Calibration.load(shipped_calibration(key, steps, 4)), eval_call([100, 101])
    config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, max_order=order,
                                   taylor_factors_dtype=torch.float32,
                                   cache_identifiers=[r"transformer_blocks\.\d+", r"single_transformer_blocks\.\d+"])
    pipe.transformer.enable_cache(config)
    try:
        with BlockCounter(pipe.transformer) as peer:
            expected = pipe(**call, num_inference_steps=steps, output_type="latent").images
    finally:
        pipe.transformer.disable_cache()
    budget = taylorseer_computed_steps(interval, warmup, steps) / steps
    got = {}
    for reuse in ("outputs", "residuals"):
        schedule = plan(cal, budget, objective="regular", pattern=(interval, warmup), fixed=("taylor", order + 1),
                        reuse=reuse)
        apply_layer_cache(pipe.transformer, LayerCacheConfig(schedule, telemetry=False))
        try:
            with BlockCounter(pipe.transformer) as mine:
                got[reuse] = pipe(**call, num_inference_steps=steps, output_type="latent").images
        finally:
            remove_layer_cache(pipe.transformer)
        assert mine.macs == peer.macs
    assert (got["outputs"] - expected).abs().max() < 1e-4
    assert (got["residuals"] - expected).abs().max() > 1e-3


def test_replays_of_diffusers_rules():
    assert taylorseer_computed_steps(1, 3, 10) == 10
    assert taylorseer_computed_steps(2, 3, 10) == 3 + 3          # steps 4, 6, 8 after the warm-up
    assert magcache_computed_steps([1.0] * 10, 1.0, 3, 0.2, 10) == 2 + 2   # 8 free steps: compute 1 in 4


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_and_realizes_what_it_plans(tiny_pipe, ctx, name):
    call = eval_call([100, 101])
    with BlockCounter(tiny_pipe.transformer) as counter:
        tiny_pipe(**call, num_inference_steps=STEPS, output_type="latent")
    reference = counter.macs
    point = prepare(name, ctx, 0.5)
    point.attach(tiny_pipe)
    try:
        with BlockCounter(tiny_pipe.transformer) as counter:
            images = tiny_pipe(**call, num_inference_steps=point.num_inference_steps, output_type="pt").images
    finally:
        point.detach(tiny_pipe)
    realized = counter.macs / reference
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    assert 0 < realized < 1, f"{name} saved nothing at budget 0.5"
    if point.planned_fraction is not None:   # planned methods must realize exactly their plan
        assert realized == pytest.approx(point.planned_fraction, abs=1e-9)
    assert not getattr(tiny_pipe.transformer, "is_cache_enabled", False)  # detached cleanly


def test_taylorseer_caches_every_block_of_a_flux_model():
    """On the FLUX-family bundled model TaylorSeer must cache the single-stream blocks too, or it misses its budget."""
    from layercache.models.registry import load_pipeline

    flux = load_pipeline("tiny-flux")
    flux.set_progress_bar_config(disable=True)
    flux_ctx = BenchContext(flux, STEPS, [{"label": [0, 3, 7], "seed": 1}])
    call = eval_call([100])
    with BlockCounter(flux.transformer) as counter:
        flux(**call, num_inference_steps=STEPS, output_type="latent")
    point = prepare("taylorseer", flux_ctx, 0.5)
    point.attach(flux)
    try:
        with BlockCounter(flux.transformer) as cached:
            flux(**call, num_inference_steps=STEPS, output_type="latent")
    finally:
        point.detach(flux)
    assert cached.macs / counter.macs == pytest.approx(point.planned_fraction, abs=1e-9)


def test_tuning_rechecks_the_best_point_of_each_best_family_on_the_recheck_images(tiny_pipe, monkeypatch):
    """A peer tuned with recheck calls (TaylorSeer: three patterns, each with orders 1 and 2) runs the best point of
    each of its RECHECK_FINALISTS best families (points computing the same steps: one pattern) on them and keeps the
    one of least error on those images alone, as LayerCache's plan_verified does."""
    from layercache.evaluation import baselines
    from layercache.planner import RECHECK_FINALISTS, output_error, reference_outputs

    calls, recheck = [{"label": [0, 3, 7], "seed": 1}], [{"label": [2, 5], "seed": 3}]
    tuned, real_tune = [], baselines.tune
    monkeypatch.setattr(baselines, "tune", lambda ctx, points: tuned.extend(points) or real_tune(ctx, points))
    chosen = prepare("taylorseer", BenchContext(tiny_pipe, 10, calls, recheck_calls=recheck), 0.5)
    assert len(tuned) == 6
    families = {}
    for point in sorted(tuned, key=lambda p: p.params["calibration_error"]):
        families.setdefault((point.params["cache_interval"], point.params["disable_cache_before_step"]), point)
    finalists = list(families.values())[:RECHECK_FINALISTS]
    assert len(finalists) == 3
    assert [p for p in tuned if "rechecked_error" in p.params] == [p for p in tuned if p in finalists]
    assert chosen is min(finalists, key=lambda p: p.params["rechecked_error"])
    reference = reference_outputs(tiny_pipe, recheck, 10)
    chosen.attach(tiny_pipe)
    try:
        images = reference_outputs(tiny_pipe, recheck, 10)
    finally:
        chosen.detach(tiny_pipe)
    assert output_error(images, reference) == pytest.approx(chosen.params["rechecked_error"])


def test_unknown_method_and_bad_budget(ctx):
    with pytest.raises(ValueError, match="unknown method"):
        prepare("teacache", ctx, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        prepare("layercache", ctx, 1.5)
