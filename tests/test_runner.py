"""The lockstep runner: honest lanes, per-step events, and a cancel that leaves the next run correct."""

import numpy as np
import pytest
import torch

import layercache as lc
from layercache.hooks import is_enabled
from layercache.methods import LayerCacheSetting, Uncached
from layercache.models.tiny import TinyDigitPipeline
from layercache.studio.runner import LockstepRunner

STEPS = 6
CALL = {"prompt": "seven", "guidance_scale": 3.0}


@pytest.fixture(scope="module")
def runner():
    torch.set_num_threads(1)
    return LockstepRunner(TinyDigitPipeline.from_weights())


@pytest.fixture(scope="module")
def calibration(runner):
    return lc.calibrate(runner.pipes["uncached"], [{"label": [3, 8], "seed": 1}], STEPS, num_groups=3)


def run_all(runner, method, seed=0, groups=3):
    return list(runner.run(CALL, seed, STEPS, method, groups))


def test_all_computed_schedule_is_bit_identical_and_streams_every_step(runner, calibration):
    events = run_all(runner, LayerCacheSetting(lc.plan(calibration, 1.0)))
    steps, final = events[:-1], events[-1]
    assert [e["step"] for e in steps] == list(range(STEPS)) and final["kind"] == "final"
    assert all(e["previews"]["uncached"].shape == (32, 32) for e in steps)
    assert all(len(e["groups"]) == 3 and all(g["computed"] == 1.0 for g in e["groups"]) for e in steps)
    assert [e["sigma"] for e in steps] == pytest.approx(calibration.sigmas)
    assert np.array_equal(final["images"]["uncached"], final["images"]["cached"])
    assert final["metrics"]["psnr"] == float("inf") and final["metrics"]["compute_speedup"] == pytest.approx(1.0)
    assert final["metrics"]["lpips"] is None and final["metrics"]["lpips_reason"]
    # the uncached image is what the pipeline makes on its own
    alone = runner.pipes["uncached"](**CALL, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                                     output_type="np").images[0, ..., 0]
    assert np.array_equal(final["images"]["uncached"], alone)
    # the last preview is the final image (sigma_N = 0 up to the [0, 1] clamp and the uint8-free path)
    assert np.allclose(steps[-1]["previews"]["cached"], final["images"]["cached"], atol=1e-5)


def test_cached_run_reuses_and_reports_telemetry(runner, calibration):
    schedule = lc.plan(calibration, 0.6)
    final = run_all(runner, LayerCacheSetting(schedule))[-1]
    events = run_all(runner, LayerCacheSetting(schedule))
    reused = [g for e in events[:-1] for g in e["groups"] if g["computed"] == 0.0]
    assert reused and all(g["k"] >= 1 and g["predictor"] for g in reused)
    assert events[-1]["metrics"]["compute_fraction"] == pytest.approx(schedule.compute_fraction)
    assert np.array_equal(events[-1]["images"]["cached"], final["images"]["cached"])  # runs repeat exactly


def test_cancel_mid_run_leaves_next_run_correct(runner, calibration):
    method = LayerCacheSetting(lc.plan(calibration, 0.6))
    fresh = run_all(runner, method, seed=5)[-1]
    stream = runner.run(CALL, 5, STEPS, method, 3)
    for event in stream:
        if event["step"] == 3:
            break
    stream.close()
    assert not is_enabled(runner.pipes["cached"].transformer)  # no hooks left attached
    again = run_all(runner, method, seed=5)[-1]
    assert np.array_equal(again["images"]["cached"], fresh["images"]["cached"])
    assert np.array_equal(again["images"]["uncached"], fresh["images"]["uncached"])


def test_new_run_cancels_an_abandoned_one(runner, calibration):
    method = LayerCacheSetting(lc.plan(calibration, 0.6))
    abandoned = runner.run(CALL, 5, STEPS, method, 3)
    next(abandoned)  # a server dropped it without closing it
    final = run_all(runner, Uncached(), seed=5)[-1]
    assert final["metrics"]["psnr"] == float("inf")
    assert list(abandoned) == []  # the abandoned run ended quietly


def test_lanes_never_run_at_once(runner, calibration):
    """The per-lane clocks only tick while that lane runs: their sum stays below the wall clock."""
    import time
    start = time.perf_counter()
    final = run_all(runner, Uncached())[-1]
    wall = time.perf_counter() - start
    assert sum(final["elapsed_s"].values()) <= wall


def test_cancel_from_another_thread_at_any_moment_ends_the_stream_quietly(runner, calibration):
    """The app's Stop cancels from a server thread while the stream runs in another: whenever it lands, the
    stream ends without an error and no hook is left behind."""
    import threading
    import time

    method = LayerCacheSetting(lc.plan(calibration, 0.6))
    for delay in np.linspace(0.0, 0.4, 9):  # a run takes about 0.5 s
        stream = runner.run(CALL, 5, STEPS, method, 3)
        timer = threading.Timer(delay, runner.cancel)
        timer.start()
        events = list(stream)  # raises if the cancel lands mid-step
        timer.join()
        time.sleep(0.01)
        assert not events or events[-1]["kind"] in ("step", "final")
        assert not is_enabled(runner.pipes["cached"].transformer)
