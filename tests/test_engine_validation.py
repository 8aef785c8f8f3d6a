"""Bad input fails early with a clear message and leaves the pipeline unchanged; state never leaks."""

import json

import numpy as np
import pytest
import torch

import layercache as lc
from layercache.groups import partition
from layercache.planner import plan

STEPS = 8


@pytest.fixture(scope="module")
def cal(tiny_pipe):
    return lc.calibrate(tiny_pipe, [{"label": [1, 7], "seed": 5}], STEPS, num_groups=4)


def run(pipe, **extra):
    return pipe(label=[2, 9], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="pt", **extra).images


def untouched(pipe):
    return not lc.is_enabled(pipe.transformer) and not any(
        hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks for m in pipe.transformer.modules())


@pytest.mark.parametrize("budget", [0, -0.1, 1.01, 2, float("nan"), "half", True])
def test_budget_outside_unit_interval(cal, budget):
    with pytest.raises(ValueError, match="budget"):
        plan(cal, budget)


@pytest.mark.parametrize("groups", [0, -1, 13, 2.5])
def test_group_count_outside_range(tiny_pipe, groups):
    with pytest.raises(ValueError, match="number of groups must be an integer from 1 to 12"):
        partition(tiny_pipe.transformer, groups)


def test_explicit_group_starts(tiny_pipe):
    assert partition(tiny_pipe.transformer, starts=[0, 2, 9]).starts == (0, 2, 9)
    with pytest.raises(ValueError, match="group starts"):
        partition(tiny_pipe.transformer, starts=[0, 5, 5])


@pytest.mark.parametrize("k", [0, -2, 1.5])
def test_k_below_one(cal, k):
    with pytest.raises(ValueError, match="largest K"):
        plan(cal, 0.5, max_k=k)


def test_calibrate_rejects_bad_arguments_before_running(tiny_pipe):
    for calls, steps in [([], STEPS), ("seven", STEPS), ([{"label": [1]}], 0)]:
        with pytest.raises(ValueError):
            lc.calibrate(tiny_pipe, calls, steps)
    with pytest.raises(ValueError, match="K values"):
        lc.calibrate(tiny_pipe, [{"label": [1]}], STEPS, k_values=(0, 2))
    assert untouched(tiny_pipe)


def table_error(cal, compute, stack: bool = False) -> float:
    """The planner's objective for an (N, G) compute mask, computed independently of its vectorized code: per
    reused cell, the better of plain reuse and the span-2 slope on the group's real anchors (its last two computed
    steps), squared error relative to the step's summed residual energy (a uniform sigma grid: no dsigma weight).
    stack=True (whole-step masks): the error of the groups' summed residual, cross terms included."""
    from layercache.calibrate import prediction_weights, relative_error

    energy = np.einsum("ggii->i", cal.gram)
    grams = [cal.gram.sum(axis=(0, 1))[None]] if stack else [cal.group_gram[g:g + 1] for g in range(cal.num_groups)]
    total = 0.0
    for g, gram in enumerate(grams):
        computed = []
        for i in range(cal.num_steps):
            if compute[i, g]:
                computed.append(i)
                continue
            options = [([computed[-1]], [1.0])]
            if len(computed) >= 2:
                anchors = computed[-2:]
                options.append((anchors, prediction_weights("slope", 2, anchors, i, cal.sigmas)))
            squared = min(relative_error(gram, a, w, i)[0] ** 2 for a, w in options)
            total += squared * gram[0, i, i] / energy[i]
    return total


def test_planner_is_deterministic_and_lands_on_the_budget(cal):
    from layercache.planner import steps_for

    for budget in [0.9, 0.73, 0.6, 0.5, 0.25, 0.05]:
        a, b = plan(cal, budget), plan(cal, budget)
        assert a.to_json() == b.to_json()
        assert a.compute_fraction == pytest.approx(steps_for(budget, STEPS) / STEPS)
        assert all(len({cell.compute for cell in row}) == 1 for row in a.cells)  # whole steps
        groups = plan(cal, budget, allocation="groups")
        assert groups.compute_fraction <= max(budget, 1 / STEPS) + 1e-9  # every group computes step 0


def test_whole_step_plan_is_the_exact_optimum_of_its_error_model(cal):
    import itertools

    from layercache.planner import steps_for

    assert np.allclose(np.diff(cal.sigmas), cal.sigmas[1] - cal.sigmas[0])  # uniform grid, as table_error assumes
    for budget in [0.75, 0.5, 0.25]:
        schedule = plan(cal, budget)
        mask = np.array([[cell.compute for cell in row] for row in schedule.cells])
        count = steps_for(budget, STEPS)
        brute = np.inf
        for rest in itertools.combinations(range(1, STEPS), count - 1):
            candidate = np.zeros_like(mask)
            candidate[[0, *rest]] = True
            brute = min(brute, table_error(cal, candidate, stack=True))
        assert table_error(cal, mask, stack=True) == pytest.approx(brute, rel=1e-6)
        assert schedule.meta["predicted_error"] == pytest.approx(brute, rel=1e-6)


def test_per_group_plan_is_the_optimum_of_its_error_model_at_its_compute(cal):
    for budget in [0.75, 0.5, 0.25]:  # N·b whole: both spend the same compute
        steps, groups = plan(cal, budget), plan(cal, budget, allocation="groups")
        assert groups.compute_fraction <= steps.compute_fraction + 1e-9
        mask = np.array([[cell.compute for cell in row] for row in groups.cells])
        assert table_error(cal, mask) == pytest.approx(groups.meta["predicted_error"], rel=1e-6)
        whole = np.array([[cell.compute for cell in row] for row in steps.cells])   # feasible for it too
        assert groups.meta["predicted_error"] <= table_error(cal, whole) + 1e-12


def test_reused_cells_take_the_least_summed_error_on_their_real_anchors(cal):
    import itertools

    from layercache.calibrate import prediction_weights

    for schedule in (plan(cal, 0.5), plan(cal, 0.5, allocation="groups")):
        for i, row in enumerate(schedule.cells):
            reused = [g for g, cell in enumerate(row) if not cell.compute]
            if not reused:
                continue

            def vector(g, kind, k):
                anchors = [a for a in range(i) if schedule.cells[a][g].compute][-k:]
                v = np.zeros(cal.num_steps)
                v[anchors] = prediction_weights(kind, k, anchors, i, cal.sigmas)
                v[i] = -1.0
                return v

            def summed(choice):
                vs = {g: vector(g, *c) for g, c in zip(reused, choice)}
                return sum(vs[g] @ cal.gram[g, h] @ vs[h] for g in reused for h in reused)

            chosen = summed([(row[g].predictor, row[g].k) for g in reused])
            best = min(summed(c) for c in itertools.product(cal.candidates, repeat=len(reused)))
            assert chosen == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_planner_respects_max_reuse(cal):
    for allocation in ("steps", "groups"):
        schedule = plan(cal, 0.5, allocation=allocation, max_reuse=1)
        for g in range(schedule.num_groups):
            run_length = 0
            for row in schedule.cells:
                run_length = 0 if row[g].compute else run_length + 1
                assert run_length <= 1


def test_a_charged_reused_call_buys_fewer_blocks_and_no_more_time(cal):
    """With `reused_call_cost` c, blocks plus every reused call's floor fit the budget: a whole-step plan computes
    round(N·(b − c)/(1 − c)) steps, a per-group plan at most that fraction of the blocks; velocity plans (calling
    nothing on reused steps) and c = 0 are what they were."""
    from layercache.planner import OutOfReach, block_budget, steps_for

    c = 0.1
    assert block_budget(0.5, 0.0) == 0.5 and block_budget(0.5, c) == pytest.approx((0.5 - c) / (1 - c))
    for budget in (0.9, 0.5, 0.3):
        blocks = block_budget(budget, c)
        steps = plan(cal, budget, reused_call_cost=c)
        assert steps.compute_fraction == pytest.approx(steps_for(blocks, STEPS) / STEPS)
        assert steps.meta["block_budget"] == pytest.approx(blocks) and steps.meta["reused_call_cost"] == c
        groups = plan(cal, budget, allocation="groups", reused_call_cost=c)
        assert groups.compute_fraction <= max(blocks, 1 / STEPS) + 1e-9
        velocity = dict(objective="outputs", velocity=True)
        assert (plan(cal, budget, reused_call_cost=c, **velocity).actions()
                == plan(cal, budget, **velocity).actions())
        assert plan(cal, budget, reused_call_cost=0.0).to_json() == plan(cal, budget).to_json()
    with pytest.raises(OutOfReach, match="does not pay for the reused calls.*velocity"):
        plan(cal, 0.1, reused_call_cost=0.1)
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(ValueError, match="reused_call_cost.*in \\[0, 1\\)"):
            plan(cal, 0.5, reused_call_cost=bad)


def test_a_charged_check_chooses_among_plans_within_the_charge(tiny_pipe, cal):
    """`plan_verified` with `reused_call_cost`: every candidate it ran is within the charge (residual and output
    plans at the charged block budget, its regular patterns among them; velocity plans at the budget itself)."""
    from layercache.planner import (
        block_budget,
        option_name,
        pattern_options,
        plan_verified,
        regular_patterns,
        steps_for,
    )

    budget, charge, calls = 0.5, 0.2, [{"label": [1, 7], "seed": 5}]   # 3 computed steps of 8, not 4
    chosen = plan_verified(tiny_pipe, cal, budget, calls, refine=1, reused_call_cost=charge)
    blocks = block_budget(budget, charge)
    tried = chosen.meta["verified"]["calibration_error"]
    patterns = regular_patterns(STEPS, blocks)
    assert patterns != regular_patterns(STEPS, budget)
    assert {option_name(o) for p in patterns for o in pattern_options(p)} <= set(tried)
    limit = steps_for(budget if chosen.velocity_steps else blocks, STEPS) / STEPS
    assert chosen.compute_fraction <= limit + 1e-9 and chosen.meta["reused_call_cost"] == charge


def test_budget_out_of_reach_says_what_to_change(cal):
    from layercache.planner import OutOfReach

    for allocation in ("steps", "groups"):
        with pytest.raises(OutOfReach, match="out of reach.*max_reuse"):
            plan(cal, 0.2, allocation=allocation, max_reuse=1)
    with pytest.raises(ValueError, match="allocation"):
        plan(cal, 0.5, allocation="cells")
    with pytest.raises(ValueError, match="max_reuse"):
        plan(cal, 0.5, max_reuse=0)


def test_enable_twice_and_unsupported_models(tiny_pipe, cal):
    lc.enable(tiny_pipe, plan(cal, 0.7))
    try:
        with pytest.raises(ValueError, match="already enabled"):
            lc.enable(tiny_pipe, plan(cal, 0.7))
    finally:
        lc.disable(tiny_pipe)
    with pytest.raises(ValueError, match="not enabled"):
        lc.disable(tiny_pipe)
    with pytest.raises(ValueError, match="not supported"):
        lc.apply_layer_cache(torch.nn.Linear(2, 2), lc.LayerCacheConfig(plan(cal, 0.7)))
    with pytest.raises(ValueError, match="Schedule"):
        lc.enable(tiny_pipe, {"cells": []})
    assert untouched(tiny_pipe)


def test_schedule_from_another_model_is_rejected_and_pipeline_unchanged(tiny_pipe, cal):
    schedule = plan(cal, 0.7)
    schedule.model_id = "QwenImageTransformer2DModel@000000000000"
    with pytest.raises(ValueError, match="made for model"):
        lc.enable(tiny_pipe, schedule)
    assert untouched(tiny_pipe)


def test_calibration_from_other_model_or_steps(tiny_pipe, cal, tmp_path):
    cal.check_fits(tiny_pipe.transformer, STEPS)
    with pytest.raises(ValueError, match="calibrate for 50 steps"):
        cal.check_fits(tiny_pipe.transformer, 50)
    import tiny_pipelines
    flux, _ = tiny_pipelines.flux()
    with pytest.raises(ValueError, match="calibration is for model"):
        cal.check_fits(flux.transformer)


def test_wrong_step_count_is_a_clear_error_and_next_run_is_correct(tiny_pipe, cal):
    schedule = plan(cal, 0.6)
    lc.enable(tiny_pipe, schedule)
    try:
        expected = run(tiny_pipe)
        with pytest.raises(ValueError, match=f"num_inference_steps={STEPS}"):
            tiny_pipe(label=[2], num_inference_steps=STEPS + 3, output_type="pt")
        assert torch.equal(run(tiny_pipe), expected)
    finally:
        lc.disable(tiny_pipe)


def test_state_resets_after_an_exception_mid_run(tiny_pipe, cal):
    schedule = plan(cal, 0.6)
    lc.enable(tiny_pipe, schedule)
    try:
        expected = run(tiny_pipe)

        def explode(pipe, step, timestep, kwargs):
            if step == 4:
                raise KeyboardInterrupt  # what a cancelled run looks like from inside
            return {}

        with pytest.raises(KeyboardInterrupt):
            run(tiny_pipe, callback_on_step_end=explode)
        # a different prompt in between must not leak into the next run either
        tiny_pipe(label=[5], num_inference_steps=STEPS, output_type="pt")
        assert torch.equal(run(tiny_pipe), expected)
    finally:
        lc.disable(tiny_pipe)


def test_schedule_json_roundtrip_and_corrupt_files(cal, tmp_path):
    schedule = plan(cal, 0.6)
    path = tmp_path / "s.json"
    schedule.save(path)
    loaded = lc.Schedule.load(path)
    assert loaded.to_json() == schedule.to_json()
    data = json.loads(path.read_text())
    cases = {
        "not valid JSON": "{oops",
        "not a LayerCache schedule": json.dumps({"cells": []}),
        "version": json.dumps(dict(data, version=99)),
        "missing the field": json.dumps({k: v for k, v in data.items() if k != "sigmas"}),
        "rows of 4 cells": json.dumps(dict(data, cells=data["cells"][:-1])),
        "neither 'compute'": json.dumps(dict(data, cells=[row[:-1] + ["slope:0"] for row in data["cells"]])),
        "group_starts": json.dumps(dict(data, group_starts=[0, 3, 3, 9])),
        "step 0": json.dumps(dict(data, cells=[["slope:2"] * 4] + data["cells"][1:])),
    }
    for message, text in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            lc.Schedule.load(path)
    velocity = plan(cal, 0.5, objective="outputs", velocity=True)   # version 2: velocity steps
    assert velocity.velocity_steps and lc.Schedule.from_json(velocity.to_json()).to_json() == velocity.to_json()
    reused = velocity.velocity_steps[0]
    for message, bad in {
        "velocity step 0": dict(velocity.to_json(), velocity_steps=[0]),
        "every group is reused": dict(data, velocity_steps=[next(i for i, row in enumerate(data["cells"])
                                                                  if "compute" in row and i > 0)]),
        "same predictor": dict(velocity.to_json(), cells=[row if i != reused else ["mean:1", "mean:2", "mean:1",
                                                                                   "mean:1"]
                                                          for i, row in enumerate(velocity.to_json()["cells"])]),
        "list of step numbers": dict(data, velocity_steps="3"),
        "reuse must be one of": dict(data, reuse="output"),
    }.items():
        with pytest.raises(ValueError, match=message):
            lc.Schedule.from_json(bad)
    assert lc.Schedule.from_json({**data, "version": 1}).velocity_steps == []   # version-1 files still load
    older = {k: v for k, v in data.items() if k != "reuse"}
    assert lc.Schedule.from_json({**older, "version": 2}).reuse == "residuals"   # as do version-2 files
    outputs = plan(cal, 0.5, reuse="outputs")   # version 3: what a reused group predicts
    assert outputs.reuse == "outputs" and lc.Schedule.from_json(outputs.to_json()).to_json() == outputs.to_json()
    with pytest.raises(ValueError, match="reuse must be one of"):
        plan(cal, 0.5, reuse="output")
    path.write_bytes(b"\x00" * 3_000_000)
    with pytest.raises(ValueError, match="larger than"):
        lc.Schedule.load(path)
    with pytest.raises(ValueError, match="not found"):
        lc.Schedule.load(tmp_path / "missing.json")


def test_calibration_roundtrip_and_corrupt_file(cal, tmp_path):
    path = tmp_path / "cal.npz"
    cal.save(path)
    loaded = lc.Calibration.load(path)
    assert np.array_equal(loaded.errors, cal.errors) and loaded.candidates == cal.candidates
    assert plan(loaded, 0.6).to_json() == plan(cal, 0.6).to_json()
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        lc.Calibration.load(path)


def test_stability_summary_shape(cal):
    stability = cal.stability()
    assert stability.shape == (4, len(cal.candidates))
    assert np.isfinite(stability).all()
    assert np.isnan(cal.velocity_change[0]).all() and np.isfinite(cal.velocity_change[1:]).all()


def test_bf16_timesteps_find_their_steps(tiny_pipe):
    """Pipelines cast the timestep to the model dtype; in bf16 sigma 0.98 reads as 0.980469."""
    import copy

    import numpy as np

    from layercache.groups import model_id
    from layercache.models.tiny import TinyDigitPipeline

    transformer = copy.deepcopy(tiny_pipe.transformer).to(torch.bfloat16)
    pipe = TinyDigitPipeline(transformer, tiny_pipe.label_encoder, tiny_pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    sigmas = [float(s) for s in np.linspace(1.0, 1 / 50, 50).astype(np.float32)]
    schedule = lc.Schedule.all_compute(model_id(transformer), sigmas, partition(transformer, 4))
    telemetry = lc.enable(pipe, schedule)
    try:
        pipe(label=[4], num_inference_steps=50, guidance_scale=1.0, output_type="pt")
    finally:
        lc.disable(pipe)
    assert [record.step for record in telemetry.steps] == list(range(50))


@pytest.mark.parametrize("steps", [8, 12])
def test_verified_plan_is_never_worse_end_to_end_than_a_whole_step_plan(tiny_pipe, steps):
    """The library's default path (plan_verified, what the app and benchmark use) is, end to end on the calibration
    calls, no worse than any whole-step plan the planner makes: its choice, its bookkeeping and its dedup hold."""
    from layercache.planner import (
        HYBRIDS,
        WHOLE_STEP_OPTIONS,
        option_name,
        output_error,
        plan_verified,
        reference_outputs,
        regular_patterns,
        verified_options,
    )

    calls = [{"label": [1, 7], "seed": 5}]
    cal = lc.calibrate(tiny_pipe, calls, steps, num_groups=4)
    reference = reference_outputs(tiny_pipe, calls, steps)

    def end_to_end(schedule):
        lc.enable(tiny_pipe, schedule, telemetry=False)
        try:
            return output_error(reference_outputs(tiny_pipe, calls, steps), reference)
        finally:
            lc.disable(tiny_pipe)

    budget = 0.4
    chosen = plan_verified(tiny_pipe, cal, budget, calls, reference=reference)
    tried = chosen.meta["verified"]["calibration_error"]
    options = verified_options(steps, budget)
    assert {option_name(o) for o in options} <= set(tried)
    refined = set(tried) - {option_name(o) for o in options}   # the best plans' steps: one predictor, or a hybrid
    assert refined and all("fixed=" in name or "hybrid=" in name for name in refined)
    assert {name.split("hybrid=")[1].split(",")[0] for name in refined if "hybrid=" in name} == set(HYBRIDS)
    assert end_to_end(chosen) == pytest.approx(min(tried.values()))
    peers_patterns = [plan(cal, budget, objective="regular", pattern=p) for p in regular_patterns(steps, budget)]
    alternatives = [plan(cal, budget, **option) for option in WHOLE_STEP_OPTIONS] + peers_patterns
    assert all(end_to_end(chosen) <= end_to_end(s) + 1e-12 for s in alternatives)
    assert untouched(tiny_pipe)


@pytest.mark.parametrize("beyond_noise", [2.0, 0.0, float("inf")])
def test_recheck_runs_the_best_plan_of_each_best_family_and_chooses_on_the_recheck_images(tiny_pipe, monkeypatch,
                                                                                        beyond_noise):
    """With recheck calls, plan_verified runs the best plan of each of its RECHECK_FINALISTS best families (plans that
    compute the same cells) on them, or that family's velocity plan where the best is not clearly better on the
    calibration calls (by BEYOND_NOISE_SE standard errors: the default, 0 and inf take each branch), and keeps the
    one of least error on the recheck images alone."""
    from layercache import planner
    from layercache.planner import (
        RECHECK_FINALISTS,
        VERIFIED_OPTIONS,
        OutOfReach,
        clearly_better,
        image_errors,
        option_name,
        plan_verified,
        reference_outputs,
    )

    monkeypatch.setattr(planner, "BEYOND_NOISE_SE", beyond_noise)
    steps, calls, recheck = 10, [{"label": [1, 7], "seed": 5}], [{"label": [2, 9, 4], "seed": 6}]
    cal = lc.calibrate(tiny_pipe, calls, steps, num_groups=4)
    reference, recheck_reference = reference_outputs(tiny_pipe, calls, steps), reference_outputs(tiny_pipe, recheck,
                                                                                                   steps)
    schedules = {}
    for option in VERIFIED_OPTIONS:   # the candidates by name
        try:
            schedules[option_name(option)] = lc.plan(cal, 0.4, **option)
        except OutOfReach:
            pass
    computes = {name: str([[c.compute for c in row] for row in s.cells]) for name, s in schedules.items()}

    def errors(name, on_calls, on_reference):
        lc.enable(tiny_pipe, schedules[name], telemetry=False)
        try:
            return image_errors(reference_outputs(tiny_pipe, on_calls, steps), on_reference)
        finally:
            lc.disable(tiny_pipe)

    chosen = plan_verified(tiny_pipe, cal, 0.4, calls, reference=reference, recheck_calls=recheck,
                           candidates=VERIFIED_OPTIONS, refine=0)   # eight plans, five families: some left out
    verified = chosen.meta["verified"]
    tried, rechecked = verified["calibration_error"], verified["rechecked_error"]
    ranked = sorted(tried, key=tried.get)   # ties: as plan_verified ranks them (the first option first)
    families = {}
    for name in ranked:
        families.setdefault(computes[name], name)
    assert len(set(tried.values())) > len(families) > RECHECK_FINALISTS
    finalists = []
    for family, best in list(families.items())[:RECHECK_FINALISTS]:
        velocity = [n for n in ranked if computes[n] == family and schedules[n].velocity_steps]
        if velocity and not clearly_better(errors(best, calls, reference), errors(velocity[0], calls, reference)):
            best = velocity[0]
        finalists.append(best)
    assert sorted(rechecked) == sorted(finalists)
    if beyond_noise == float("inf"):   # a family with a velocity plan is rechecked with it
        assert any(schedules[n].velocity_steps for n in finalists)
    assert verified["chosen"] == min(rechecked, key=rechecked.get)
    assert float(errors(verified["chosen"], recheck, recheck_reference).mean()) == pytest.approx(
        rechecked[verified["chosen"]])
    assert untouched(tiny_pipe)


def test_clearly_better_asks_for_a_paired_lead_beyond_noise(monkeypatch):
    """A plan is clearly better when its mean paired per-image lead exceeds BEYOND_NOISE_SE standard errors."""
    from layercache import planner

    base = np.array([-10.0, -9.0, -11.0, -10.5])
    assert planner.clearly_better(base - 1.0, base)                      # ahead on every image by the same amount
    assert not planner.clearly_better(base, base)                         # level
    assert not planner.clearly_better(base + 0.1, base)                   # behind
    noisy = base + np.array([-2.0, 1.5, -1.0, 0.9])                       # mean lead 0.15, SE ~0.8
    assert not planner.clearly_better(noisy, base)
    monkeypatch.setattr(planner, "BEYOND_NOISE_SE", 0.0)
    assert planner.clearly_better(noisy, base)                            # any lead counts at zero standard errors


def test_a_family_is_rechecked_with_its_fastest_plan_its_best_does_not_clearly_beat():
    """The best residual plan of a family, its hybrid (half its reused steps velocity steps) and its velocity plan
    (all of them): each faster plan replaces a slower one unless the slower is clearly better; a hybrid is held to
    the velocity plan as the residual plan is (it was exempt while any plan with a velocity step counted as fast)."""
    from layercache.planner import fastest_within_noise

    base = np.array([-10.0, -9.0, -11.0, -10.5])
    noisy_lead = base + np.array([-2.0, 1.5, -1.0, 0.9])              # mean lead 0.15, SE ~0.8: not clear
    calls = {"residual": 10, "hybrid": 7, "velocity": 4}

    def choose(best, residual, hybrid, velocity):
        errors = {"residual": residual, "hybrid": hybrid, "velocity": velocity}
        return fastest_within_noise(best, list(errors), calls, errors)

    assert choose("residual", base, base, base) == "velocity"              # level: the fastest
    assert choose("residual", noisy_lead, base, base) == "velocity"
    assert choose("residual", base - 1, base, base + 0.1) == "residual"    # clearly better than both faster plans
    assert choose("residual", base - 1, base - 1, base) == "hybrid"        # clearly better than the velocity plan only
    assert choose("hybrid", base - 1, base - 1.05, base) == "hybrid"
    assert choose("hybrid", base, noisy_lead, base) == "velocity"          # a hybrid within noise of the fastest
    assert choose("velocity", base, base, base) == "velocity"
    assert fastest_within_noise("hybrid", ["hybrid", "residual"], calls, {"hybrid": base, "residual": base - 1}) \
        == "hybrid"                                                        # never a slower plan


def test_recheck_asks_prefer_only_for_the_finalist_families():
    from layercache.planner import RECHECK_FINALISTS, recheck

    ranked = [f"plan{i}" for i in range(12)]
    asked = []

    def prefer(best):
        asked.append(best)
        return best + "'"

    errors = recheck(ranked, lambda name: float(len(name)), lambda name: int(name[4:]) % 6, prefer)
    assert asked == ranked[:RECHECK_FINALISTS]
    assert list(errors) == [name + "'" for name in ranked[:RECHECK_FINALISTS]]


def test_the_check_scores_what_a_mean_psnr_averages():
    """output_error is the mean over every image of every call of log(per-image MSE), floored where the benchmark
    caps PSNR: it ranks plans as a mean PSNR does, where the mean of the squared errors can rank them the other
    way round (one image far off outweighs every other)."""
    from layercache.planner import output_error

    reference = [torch.zeros(2, 4, 3), torch.zeros(1, 4, 3)]
    errors = [0.04, 1e-6, 9.0]   # per image, over both calls
    latents = [torch.stack([torch.full((4, 3), e ** 0.5) for e in errors[:2]]), torch.full((1, 4, 3), 3.0)]
    assert output_error(latents, reference) == pytest.approx(float(np.mean(np.log(errors))))
    zeros = [torch.zeros(3, 1), torch.zeros(1, 1)]
    one_far_off = [torch.full((3, 1), 1e-3), torch.tensor([[3.0]])]   # MSE 1e-6 three times, then 9
    all_a_little = [torch.full((3, 1), 0.5), torch.tensor([[0.5]])]  # MSE 0.25 each
    assert output_error(one_far_off, zeros) < output_error(all_a_little, zeros)
    assert np.mean([1e-6] * 3 + [9.0]) > 0.25   # the mean MSE ranks them the other way
    assert output_error(zeros, zeros) == pytest.approx(np.log(1e-10))   # identical latents: finite, at the cap


def test_the_check_compares_the_images_a_user_sees(tiny_pipe):
    """plan_verified and the peers' tuning score the pipeline's images (decoded, in [0, 1]), which the benchmark's
    PSNR scores, not the final latents: a latent error where the image is clamped (a digit's background below -1)
    is no error in the image."""
    from layercache.calibrate import call_kwargs
    from layercache.planner import output_error, reference_outputs

    calls = [{"label": [3, 7], "seed": 5}]
    outputs = reference_outputs(tiny_pipe, calls, 4)
    expected = tiny_pipe(**call_kwargs(calls[0]), num_inference_steps=4, output_type="pt").images.float()
    assert torch.equal(outputs[0], expected)
    assert outputs[0].min() >= 0 and outputs[0].max() <= 1
    latents = tiny_pipe(**call_kwargs(calls[0]), num_inference_steps=4, output_type="latent").images.float()
    assert not torch.equal(outputs[0].flatten(1), latents.flatten(1))
    assert output_error(outputs, outputs) == pytest.approx(np.log(1e-10))


def test_plan_verified_passes_argument_errors_through(tiny_pipe, cal):
    from layercache.planner import plan_verified

    with pytest.raises(ValueError, match="largest K"):
        plan_verified(tiny_pipe, cal, 0.5, [{"label": [1], "seed": 5}], max_k=0)
    assert untouched(tiny_pipe)


def test_the_check_tries_each_hybrid_on_its_best_whole_step_plans_and_keeps_the_best(tiny_pipe, cal):
    """With `hybrids`, plan_verified also runs each hybrid of its `refine` best whole-step plans without velocity
    steps (after the fixed-predictor round) and, with no recheck, keeps the plan of least error."""
    from layercache.planner import HYBRIDS, plan_verified

    chosen = plan_verified(tiny_pipe, cal, 0.4, [{"label": [1, 7], "seed": 5}], fixed_predictors=(), refine=2,
                           hybrids=HYBRIDS)
    tried = chosen.meta["verified"]["calibration_error"]
    first_seen = {}
    for name, error in tried.items():   # plans identical to an earlier one share its error and are not refined
        first_seen.setdefault(error, name)
    whole = [n for n in sorted(first_seen.values(), key=tried.get)
             if "hybrid=" not in n and "velocity=True" not in n and "allocation=groups" not in n][:2]

    def with_hybrid(name, rule):
        return ",".join(sorted([*name.split(","), f"hybrid={rule}"], key=lambda part: part.split("=")[0]))

    assert len(whole) == 2
    assert sorted(n for n in tried if "hybrid=" in n) == sorted(with_hybrid(n, h) for n in whole for h in HYBRIDS)
    assert chosen.meta["verified"]["chosen"] == min(tried, key=tried.get)
    assert untouched(tiny_pipe)


def test_fixed_predictor_keeps_the_steps_and_sets_every_reused_cell(cal):
    base, fixed = plan(cal, 0.5), plan(cal, 0.5, fixed=("slope", 2))
    assert [[c.compute for c in row] for row in base.cells] == [[c.compute for c in row] for row in fixed.cells]
    assert {(c.predictor, c.k) for row in fixed.cells for c in row if not c.compute} == {("slope", 2)}
    for wrong in ({"fixed": ("slope", 2), "max_k": 1}, {"fixed": ("taylor", 1)}, {"fixed": ("cubic", 2)},
                  {"fixed": ("slope", 2), "predictors": ("mean",)}):
        with pytest.raises(ValueError, match=r"fixed must be a \(predictor, K\) pair allowed here"):
            plan(cal, 0.5, **wrong)


def test_a_fixed_predictor_needs_no_calibrated_errors(cal):
    """Calibrations made before a predictor existed (no error-table column for it) still plan with it fixed."""
    from dataclasses import replace

    keep = [c for c, (kind, _) in enumerate(cal.candidates) if kind != "taylor"]
    old = replace(cal, candidates=[cal.candidates[c] for c in keep], errors=cal.errors[..., keep])
    fixed = plan(old, 0.35, fixed=("taylor", 3))
    assert {(c.predictor, c.k) for row in fixed.cells for c in row if not c.compute} == {("taylor", 3)}
    assert fixed.cells == plan(cal, 0.35, fixed=("taylor", 3)).cells


@pytest.mark.parametrize("allocation", ["steps", "groups"])
def test_hooks_hand_each_predictor_its_groups_computed_steps(tiny_pipe, cal, monkeypatch, allocation):
    """A reused group is predicted from that group's own last computed steps (sigmas and step indices), at the
    current step: what the "taylor" predictor extrapolates in and what the error model assumed."""
    from layercache import hooks

    schedule = plan(cal, 0.35, allocation=allocation, fixed=("taylor", 3))
    calls, real = [], hooks.predict

    def spy(kind, deltas, sigmas, sigma_now, sigma_next, k, steps=None, step_now=None):
        calls.append((kind, k, list(sigmas), sigma_now, list(steps), step_now))
        return real(kind, deltas, sigmas, sigma_now, sigma_next, k, steps, step_now)

    monkeypatch.setattr(hooks, "predict", spy)
    lc.enable(tiny_pipe, schedule)
    try:
        run(tiny_pipe)
    finally:
        lc.disable(tiny_pipe)
    reused = {(i, g) for i, row in enumerate(schedule.cells) for g, c in enumerate(row) if not c.compute}
    assert reused and calls
    for kind, k, sigmas, sigma_now, steps, step_now in calls:
        assert (kind, k) == ("taylor", 3)
        groups = [g for g in range(cal.num_groups) if (step_now, g) in reused]
        expected = [[a for a in range(step_now) if schedule.cells[a][g].compute][-3:] for g in groups]
        assert steps in expected
        assert sigmas == pytest.approx([schedule.sigmas[a] for a in steps], rel=1e-5)
        assert sigma_now == pytest.approx(schedule.sigmas[step_now], rel=1e-5)


@pytest.mark.parametrize("reuse", ["outputs", "residuals"])
@pytest.mark.parametrize("groups", [(1,), (0, 1), (1, 2)])
def test_reused_groups_hand_on_their_predicted_output_or_their_input_plus_residual(tiny_pipe, cal, reuse, groups):
    """Consecutive groups reused by plain reuse (slope:1) at one step, every other cell computed: the next group's
    input is the last reused group's output at the step before (`reuse="outputs"`; the groups before it predict
    nothing), or the first one's input now plus their residuals then."""
    from dataclasses import replace

    from diffusers.hooks._helpers import TransformerBlockRegistry

    from layercache.groups import find_blocks
    from layercache.schedule import Cell

    step = 4
    full = lc.Schedule.all_compute(cal.model_id, cal.sigmas, partition(tiny_pipe.transformer, 4))
    cells = [list(row) for row in full.cells]
    for group in groups:
        cells[step][group] = Cell(False, "slope", 1)
    schedule = replace(full, cells=cells, reuse=reuse)
    blocks = [block for _, block in find_blocks(tiny_pipe.transformer)]
    head, tail, following = (blocks[cal.group_starts[groups[0]]], blocks[cal.group_starts[groups[-1] + 1] - 1],
                             blocks[cal.group_starts[groups[-1] + 1]])
    seen = {"in": [], "out": [], "next": []}

    index = TransformerBlockRegistry.get(type(tail)).return_hidden_states_index

    def record(name):
        def hook(module, args, kwargs, *output):
            seen[name].append(output[0][index] if output else kwargs.get("hidden_states", args[0] if args else None))
        return hook

    handles = [head.register_forward_pre_hook(record("in"), with_kwargs=True),
               tail.register_forward_hook(record("out"), with_kwargs=True),
               following.register_forward_pre_hook(record("next"), with_kwargs=True)]
    try:
        run(tiny_pipe)
        uncached = {name: list(values) for name, values in seen.items()}
        for values in seen.values():
            values.clear()
        lc.enable(tiny_pipe, schedule)
        try:
            run(tiny_pipe)
        finally:
            lc.disable(tiny_pipe)
    finally:
        for handle in handles:
            handle.remove()
    calls = len(uncached["out"]) // STEPS   # the transformer's calls per step (cond and uncond: two)
    assert calls * STEPS == len(uncached["out"]) == len(seen["next"])
    for now, then in zip(range(step * calls, (step + 1) * calls), range((step - 1) * calls, step * calls)):
        before = uncached["out"][then]   # steps before `step` ran uncached: the same tensors in both runs
        expected = before if reuse == "outputs" else seen["in"][now] + (before - uncached["in"][then])
        assert torch.allclose(seen["next"][now], expected, atol=1e-6)
        assert not torch.allclose(seen["next"][now], uncached["next"][now], atol=1e-4)   # it was reused


def test_reusing_outputs_with_every_cell_computed_is_the_uncached_model_and_the_same_telemetry(tiny_pipe, cal):
    """`reuse="outputs"` changes what the logs hold, not what a computed step gives or what telemetry shows: with
    every cell computed the images are the uncached ones bit for bit and the velocity change is residual mode's."""
    from dataclasses import replace

    from layercache.hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache

    reference = run(tiny_pipe)
    full = lc.Schedule.all_compute(cal.model_id, cal.sigmas, partition(tiny_pipe.transformer, 4))
    events = {}
    for reuse in ("residuals", "outputs"):
        telemetry = apply_layer_cache(tiny_pipe.transformer, LayerCacheConfig(replace(full, reuse=reuse)))
        try:
            assert torch.equal(run(tiny_pipe), reference)
        finally:
            remove_layer_cache(tiny_pipe.transformer)
        events[reuse] = telemetry.events()
    assert untouched(tiny_pipe)
    changes = [[g["velocity_change"] for g in e["groups"]] for e in events["outputs"]]
    assert changes == [[g["velocity_change"] for g in e["groups"]] for e in events["residuals"]]
    assert all(c is not None for row in changes[1:] for c in row)


def test_regular_plans_follow_a_warm_up_then_an_interval(cal):
    from layercache.planner import regular_steps, steps_for

    assert regular_steps(3, 1, 20) == [0, 2, 5, 8, 11, 14, 17]
    for budget in [0.75, 0.5, 0.3]:
        schedule = plan(cal, budget, objective="regular")
        steps = [i for i, row in enumerate(schedule.cells) if row[0].compute]
        assert len(steps) == steps_for(budget, STEPS)
        assert any(steps == regular_steps(i, w, STEPS) for i in range(1, STEPS + 1) for w in range(1, STEPS + 1))


def test_a_pattern_sets_the_regular_plan_taylorseer_would_compute(cal):
    """`regular_patterns` are the (interval, warm-up) points TaylorSeer's tuning tries; plan(pattern=...) computes
    exactly their steps, and a pattern that misses the budget or is malformed is refused with what to change."""
    from layercache.evaluation.baselines import taylorseer_computed_steps
    from layercache.planner import OutOfReach, regular_patterns, regular_steps, steps_for

    for budget in [0.75, 0.5, 0.3]:
        patterns = regular_patterns(STEPS, budget)
        assert 1 <= len(patterns) <= 3 and patterns == sorted(patterns)   # most frequent refresh first
        for interval, warmup in patterns:
            assert taylorseer_computed_steps(interval, warmup, STEPS) == steps_for(budget, STEPS)
            schedule = plan(cal, budget, objective="regular", pattern=(interval, warmup))
            steps = [i for i, row in enumerate(schedule.cells) if row[0].compute]
            assert steps == regular_steps(interval, warmup, STEPS)
            assert schedule.meta["pattern"] == [interval, warmup]
    with pytest.raises(OutOfReach, match="choose one of regular_patterns"):
        plan(cal, 0.5, objective="regular", pattern=(1, 1))        # computes every step
    with pytest.raises(ValueError, match="use objective='regular'"):
        plan(cal, 0.5, pattern=(2, 1))
    with pytest.raises(ValueError, match="two integers >= 1"):
        plan(cal, 0.5, objective="regular", pattern=(2, 0))
