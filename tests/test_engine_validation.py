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


def test_planner_is_deterministic_and_lands_within_one_cell(cal):
    for budget in [0.9, 0.73, 0.6, 0.5]:
        a, b = plan(cal, budget), plan(cal, budget)
        assert a.to_json() == b.to_json()
        assert budget - max(cal.group_costs) - 1e-9 < a.compute_fraction <= budget + 1e-9
        assert all(cell.compute for cell in a.cells[0] + a.cells[1] + a.cells[-1])  # protected steps


def test_planner_respects_max_reuse(cal):
    schedule = plan(cal, 0.5, max_reuse=2)
    for g in range(schedule.num_groups):
        run_length = 0
        for row in schedule.cells:
            run_length = 0 if row[g].compute else run_length + 1
            assert run_length <= 2


def test_synchronized_plan_reuses_whole_steps_at_the_least_table_error(cal):
    import itertools

    import numpy as np

    from layercache.planner import steps_for

    schedule = plan(cal, 0.5, synchronized=True, gamma=1.0)
    computed = [i for i, row in enumerate(schedule.cells) if row[0].compute]
    assert all(len({cell.compute for cell in row}) == 1 for row in schedule.cells)  # all groups together
    assert len(computed) == steps_for(0.5, STEPS) and {0, 1, STEPS - 1} <= set(computed)
    assert schedule.meta["synchronized"] and schedule.compute_fraction == pytest.approx(len(computed) / STEPS)
    # each reused cell takes its group's best candidate at its horizon, so groups may differ
    table = cal.errors

    def error(steps):
        total, last = 0.0, 0
        for i in range(STEPS):
            if i in steps:
                last = i
                continue
            if i - last > min(4, cal.max_horizon):
                return np.inf
            total += table[i, :, i - last].min(axis=-1).sum()
        return total

    for i, row in enumerate(schedule.cells):
        last = max(c for c in computed if c <= i)
        for g, cell in enumerate(row):
            if not cell.compute:
                assert table[i, g, i - last, cal.candidates.index((cell.predictor, cell.k))] == table[i, g, i - last].min()
    # no other choice of as many computed steps (0, 1 and the last among them) has a smaller table error
    free = range(2, STEPS - 1)
    best = min(error({0, 1, STEPS - 1, *rest}) for rest in itertools.combinations(free, len(computed) - 3))
    assert error(set(computed)) == pytest.approx(best)


def test_budget_out_of_reach_says_what_to_change(cal):
    with pytest.raises(ValueError, match="out of reach"):
        plan(cal, 0.2, max_reuse=1)
    with pytest.raises(ValueError, match="out of reach.*max_reuse"):
        plan(cal, 0.2, max_reuse=1, synchronized=True)
    with pytest.raises(ValueError, match="per-group plans only"):
        plan(cal, 0.5, synchronized=True, step_error_cap=0.3)
    assert plan(cal, 0.5, synchronized=True, group_weights=[0, 1, 1, 1]).compute_fraction == pytest.approx(0.5)


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


def test_plan_verified_keeps_the_best_cap_on_calibration_calls(tiny_pipe, cal):
    from layercache.planner import plan_verified

    calls = [{"label": [1, 7], "seed": 5}]
    schedule = plan_verified(tiny_pipe, cal, 0.6, calls)
    tried = schedule.meta["verified"]["calibration_mse"]
    assert set(tried) <= {"max_reuse=2", "max_reuse=3", "max_reuse=4", "gamma=1.0,synchronized=True",
                          "gamma=2.0,synchronized=True"} and len(tried) >= 3
    chosen = dict(item.split("=") for item in min(tried, key=tried.get).split(","))
    assert all(str(schedule.meta[k]) == v for k, v in chosen.items())
    assert 0.6 - max(cal.group_costs) < schedule.compute_fraction <= 0.6 + 0.5 / STEPS + 1e-9
    assert untouched(tiny_pipe)
