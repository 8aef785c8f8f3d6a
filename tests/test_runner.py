"""The lockstep runner: honest lanes, per-step events, and a cancel that leaves the next run correct."""

import numpy as np
import pytest
import torch

import layercache as lc
from layercache.hooks import is_enabled
from layercache.methods import LayerCacheSetting, Uncached
from layercache.models.tiny import TinyDigitPipeline
from layercache.studio import runner as runner_module
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


def test_velocity_steps_stream_every_step_and_realize_their_compute(runner, calibration):
    """A plan with velocity steps (the transformer skipped) in the app's lanes: every step still streams both
    previews, its groups read as reused, and the run realizes the plan's compute."""
    schedule = lc.plan(calibration, 0.5, objective="outputs", velocity=True)
    events = run_all(runner, LayerCacheSetting(schedule))
    steps, final = events[:-1], events[-1]
    assert schedule.velocity_steps and [e["step"] for e in steps] == list(range(STEPS))
    assert all(g["computed"] == 0.0 for s in schedule.velocity_steps for g in steps[s]["groups"])
    assert all(e["previews"]["cached"].shape == (32, 32) for e in steps)
    assert final["metrics"]["compute_fraction"] == pytest.approx(schedule.compute_fraction)
    assert 0 < final["metrics"]["psnr"] < float("inf")


def test_cancel_mid_run_leaves_next_run_correct(runner, calibration):
    method = LayerCacheSetting(lc.plan(calibration, 0.6))
    fresh = run_all(runner, method, seed=5)[-1]
    stream = runner.run(CALL, 5, STEPS, method, 3)
    for event in stream:
        if event["step"] == 3:
            break
    stream.close()
    assert not is_enabled(runner.pipes["cached"].transformer)  # no hooks left attached
    assert all("step" not in vars(pipe.scheduler) for pipe in runner.pipes.values())  # nor the velocity recorder
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


def assert_one_set_of_weights(runner):
    """The cached lane holds no second copy of any parameter, buffer or other tensor (Qwen-Image's rope tables):
    the same tensor objects, the same memory, in a transformer module object of its own (hooks are per module
    object); every other component but the scheduler is the uncached lane's own."""
    uncached, cached = (runner.pipes[lane].transformer for lane in ("uncached", "cached"))
    assert cached is not uncached

    def tensors(module):
        return [list(module.parameters()), list(module.buffers()),
                [v for m in module.modules() for v in vars(m).values() if torch.is_tensor(v)]]

    for ours, theirs in zip(tensors(uncached), tensors(cached)):
        assert len(ours) == len(theirs) and all(a is b for a, b in zip(ours, theirs))
        assert [t.data_ptr() for t in ours] == [t.data_ptr() for t in theirs]
    for key, component in runner.pipes["uncached"].components.items():
        if key not in ("transformer", "scheduler"):
            assert runner.pipes["cached"].components[key] is component


def test_lanes_share_every_weight(runner):
    assert_one_set_of_weights(runner)


def test_uncached_lane_never_sees_a_cache_hook_fire(runner, calibration, monkeypatch):
    """While a cache that reuses runs, every firing of its hooks is on the cached lane's modules."""
    from layercache.hooks import LayerCacheBlockHook, LayerCacheModelHook

    fired = []
    for cls in (LayerCacheBlockHook, LayerCacheModelHook):
        def spy(self, module, *args, _real=cls.new_forward, **kwargs):
            fired.append(id(module))
            return _real(self, module, *args, **kwargs)
        monkeypatch.setattr(cls, "new_forward", spy)
    final = run_all(runner, LayerCacheSetting(lc.plan(calibration, 0.6)))[-1]
    assert final["metrics"]["compute_fraction"] < 0.8  # the cache really reused
    uncached = {id(m) for m in runner.pipes["uncached"].transformer.modules()}
    cached = {id(m) for m in runner.pipes["cached"].transformer.modules()}
    assert fired and set(fired) <= cached and not set(fired) & uncached
    alone = runner.pipes["uncached"](**CALL, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                                     output_type="np").images[0, ..., 0]
    assert np.array_equal(final["images"]["uncached"], alone)


# --- the hub pipelines' code paths, with tiny random components -------------------------------------------

HUB = ["flux", "sd35", "qwen"]


def hub_runner(name, dtype=torch.float32):
    """A runner on a tiny random hub pipeline (or the bundled model: "tiny"), its call and a calibration."""
    import tiny_pipelines

    torch.set_num_threads(1)
    if name == "tiny":
        pipe, call, calibration_call = TinyDigitPipeline.from_weights(), CALL, {"label": [3, 8], "seed": 1}
    else:
        pipe, call = tiny_pipelines.BUILDERS[name]()
    pipe.set_progress_bar_config(disable=True)
    if dtype != torch.float32:
        pipe.to(dtype)  # the prompt embeddings too: without text encoders they set the latents' dtype
        call = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in call.items()}
    if name != "tiny":
        calibration_call = dict(call, seed=11)
    cal = lc.calibrate(pipe, [calibration_call], STEPS, num_groups=2)
    return LockstepRunner(pipe), call, cal


def image_alone(pipe, call):
    images = pipe(**call, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="pt")
    return images.images[0].float().clamp(0, 1).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", HUB)
def test_hub_pipelines_stream_a_preview_every_step_in_both_lanes(name):
    runner, call, cal = hub_runner(name)
    assert_one_set_of_weights(runner)
    events = list(runner.run(call, 0, STEPS, LayerCacheSetting(lc.plan(cal, 0.6)), 2))
    steps, final = events[:-1], events[-1]
    assert [e["step"] for e in steps] == list(range(STEPS)) and final["kind"] == "final"
    scale = runner.pipes["uncached"].vae_scale_factor  # one preview pixel per latent pixel
    shape = (call["height"] // scale, call["width"] // scale, 3)
    for event in steps:
        for lane in ("uncached", "cached"):
            preview = event["previews"][lane]
            assert preview.shape == shape and preview.dtype == np.float32
            assert preview.min() >= 0 and preview.max() <= 1 and np.ptp(preview) > 0
    assert final["metrics"]["compute_fraction"] < 0.8
    assert not np.array_equal(steps[-1]["previews"]["cached"], steps[-1]["previews"]["uncached"])
    assert np.array_equal(final["images"]["uncached"], image_alone(runner.pipes["uncached"], call))
    assert all("step" not in vars(pipe.scheduler) for pipe in runner.pipes.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", HUB + ["tiny"])
def test_every_cell_computed_is_bit_identical_in_fp32_and_bf16(name, dtype):
    """With every cell computed the cached lane matches the uncached one bit for bit, final images and every
    step's preview alike, in fp32 and with bf16 weights and latents."""
    runner, call, cal = hub_runner(name, dtype)
    assert runner.pipes["cached"].transformer.dtype == dtype
    events = list(runner.run(call, 0, STEPS, LayerCacheSetting(lc.plan(cal, 1.0)), 2))
    steps, final = events[:-1], events[-1]
    assert len(steps) == STEPS and all(g["computed"] == 1.0 for e in steps for g in e["groups"])
    assert all(np.array_equal(e["previews"]["cached"], e["previews"]["uncached"]) for e in steps)
    assert np.array_equal(final["images"]["cached"], final["images"]["uncached"])
    assert final["metrics"]["psnr"] == float("inf")


def test_a_diffusers_cache_on_the_cached_lane_stays_there():
    """diffusers' own hooks (FirstBlockCache through `enable_cache`) live on the cached lane's module objects:
    the uncached lane makes the image the pipeline makes alone."""
    from diffusers import FirstBlockCacheConfig

    from layercache.methods import DiffusersCacheSetting

    runner, call, _ = hub_runner("flux")
    method = DiffusersCacheSetting(FirstBlockCacheConfig(threshold=1.0), "first-block")
    final = list(runner.run(call, 0, STEPS, method, 2))[-1]
    assert final["metrics"]["compute_fraction"] < 1.0  # it skipped blocks in the cached lane
    assert not runner.pipes["cached"].transformer.is_cache_enabled  # detached after the run
    assert np.array_equal(final["images"]["uncached"], image_alone(runner.pipes["uncached"], call))


def test_a_lanes_clock_waits_for_the_kernels_it_queued_on_an_accelerator(monkeypatch):
    # On a GPU the step callback fires once the kernels are launched; a clock read then would time the launch
    waited = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: waited.append(device))
    lane = runner_module._Lane.__new__(runner_module._Lane)  # the clock alone: no pipeline, no thread
    lane.started = 0.0
    lane._seconds(torch.zeros(1))
    assert waited == []  # CPU work is done when the call returns: no sync
    lane._seconds(torch.empty(1, device="meta"))
    assert waited == [torch.device("meta")]
