"""LayerCache on real pipeline classes: the bundled one, and Flux / SD3 / SD3.5 / Qwen-Image with tiny
random components. Every cell computed must be bit-identical to uncached; hooks removed must restore
the model; real block executions must match the schedule per CFG branch."""

import pytest
import tiny_pipelines
import torch

import layercache as lc
from layercache.groups import find_blocks

STEPS = 6
NAMES = ["tiny", "flux", "sd3", "sd35", "qwen"]


def setup(name, cache={}):  # noqa: B006 - module-level memo: each pipeline is built and calibrated once
    if name not in cache:
        if name == "tiny":
            from layercache.models.tiny import TinyDigitPipeline
            pipe = TinyDigitPipeline.from_weights()
            kwargs = {"label": [3, 8]}
        else:
            pipe, kwargs = tiny_pipelines.BUILDERS[name]()
        pipe.set_progress_bar_config(disable=True)
        cal = lc.calibrate(pipe, [dict(kwargs, seed=11)], STEPS, num_groups=2)
        cache[name] = (pipe, kwargs, cal)
    return cache[name]


def run(pipe, kwargs, **extra):
    return pipe(**kwargs, **extra, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


@pytest.mark.parametrize("name", NAMES)
def test_every_cell_computed_is_bit_identical(name):
    pipe, kwargs, cal = setup(name)
    reference = run(pipe, kwargs)
    lc.enable(pipe, lc.plan(cal, 1.0))
    try:
        assert torch.equal(run(pipe, kwargs), reference)
    finally:
        lc.disable(pipe)


@pytest.mark.parametrize("name", NAMES)
def test_cached_runs_repeat_and_disable_restores(name):
    pipe, kwargs, cal = setup(name)
    reference = run(pipe, kwargs)
    schedule = lc.plan(cal, 0.6)
    assert schedule.compute_fraction < 0.75
    lc.enable(pipe, schedule)
    try:
        first, second = run(pipe, kwargs), run(pipe, kwargs)
    finally:
        lc.disable(pipe)
    assert torch.equal(first, second)
    assert not torch.equal(first, reference)  # reuse really happened
    assert torch.isfinite(first).all()
    assert torch.equal(run(pipe, kwargs), reference)
    assert not lc.is_enabled(pipe.transformer)
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks for m in pipe.transformer.modules())


@pytest.mark.parametrize("name", NAMES)
def test_text_stream_left_unpredicted_where_no_later_group_reads_it(name, monkeypatch):
    """A reused group with no computed group after it skips its text-stream prediction (a speed-up): every supported
    transformer drops that stream after its last block, so the images equal those of a run that predicts it."""
    from layercache.hooks import LayerCacheBlockHook
    pipe, kwargs, cal = setup(name)
    schedule = lc.plan(cal, 0.6, allocation="groups")
    calls = []
    original = LayerCacheBlockHook._encoder_read_later

    def spy(self, state):
        calls.append(original(self, state))
        return calls[-1]

    lc.enable(pipe, schedule)
    try:
        monkeypatch.setattr(LayerCacheBlockHook, "_encoder_read_later", spy)
        skipping = run(pipe, kwargs)
        monkeypatch.setattr(LayerCacheBlockHook, "_encoder_read_later", lambda self, state: True)
        predicting = run(pipe, kwargs)
    finally:
        lc.disable(pipe)
    assert False in calls   # the skip happened
    assert torch.equal(skipping, predicting)


@pytest.mark.parametrize("reuse", ["residuals", "outputs"])
@pytest.mark.parametrize("name", NAMES)
def test_block_inputs_not_run_on_steps_that_reuse_every_group(name, reuse, monkeypatch):
    """On a call that reuses every group no block reads the text embedder's or the rotary positions' output, so they
    do not run (the floor of residual reuse): the images equal those of a run that runs them on every call."""
    from layercache.groups import model_spec
    pipe, kwargs, cal = setup(name)
    schedule = lc.plan(cal, 0.5, reuse=reuse)
    fully_reused = sum(not any(cell.compute for cell in row) for row in schedule.cells)
    assert fully_reused > 0
    names = model_spec(pipe.transformer)["block_inputs"]
    runs = {n: 0 for n in names}
    for n in names:   # count the module's own forward (the hook wraps the instance attribute, restored below)
        module = pipe.transformer.get_submodule(n)
        original = module.forward

        def counted(*args, _n=n, _original=original, **kw):
            runs[_n] += 1
            return _original(*args, **kw)
        monkeypatch.setattr(module, "forward", counted)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        lc.enable(pipe, schedule)
        try:
            skipping = run(pipe, kwargs)
        finally:
            lc.disable(pipe)
        skipped = {n: len(calls) - count for n, count in runs.items()}
        monkeypatch.setitem(model_spec(pipe.transformer), "block_inputs", [])
        lc.enable(pipe, schedule)
        try:
            running = run(pipe, kwargs)
        finally:
            lc.disable(pipe)
    finally:
        handle.remove()
    per_step = len(calls) // 2 // STEPS   # calls per step (CFG branches)
    assert skipped == {n: fully_reused * per_step for n in names}
    assert torch.equal(skipping, running)


@pytest.mark.parametrize("allocation", ["steps", "groups"])
@pytest.mark.parametrize("name", NAMES)
def test_block_executions_match_schedule_per_cfg_branch(name, allocation):
    pipe, kwargs, cal = setup(name)
    schedule = lc.plan(cal, 0.6, allocation=allocation)
    ends = schedule.group_starts[1:] + [schedule.num_blocks]
    expected = sum(len(range(*bounds)) for row in schedule.cells
                   for bounds, cell in zip(zip(schedule.group_starts, ends), row) if cell.compute)
    counts = {}
    lc.enable(pipe, schedule)
    hook = pipe.transformer._diffusers_hook.get_hook("layercache_model")

    def count(module, args, output):
        context = hook.state_manager._context.name
        counts[context] = counts.get(context, 0) + 1

    handles = [block.attn.to_q.register_forward_hook(count) for _, block in find_blocks(pipe.transformer)]
    try:
        run(pipe, kwargs)
    finally:
        for handle in handles:
            handle.remove()
        lc.disable(pipe)
    branches = {"sd3": ["default"], "sd35": ["default"]}.get(name, ["cond", "uncond"])
    assert counts == {branch: expected for branch in branches}


def test_sd3_skip_layer_guidance_counts_each_step_once():
    pipe, kwargs, cal = setup("sd3")
    extra = {"skip_guidance_layers": [1], "skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 1.0}
    reference = run(pipe, kwargs, **extra)
    telemetry = lc.enable(pipe, lc.plan(cal, 1.0))
    try:
        assert torch.equal(run(pipe, kwargs, **extra), reference)
        assert [record.step for record in telemetry.steps] == list(range(STEPS))
        lc.disable(pipe)
        telemetry = lc.enable(pipe, lc.plan(cal, 0.6))
        cached = run(pipe, kwargs, **extra)
        assert [record.step for record in telemetry.steps] == list(range(STEPS))
        assert torch.isfinite(cached).all()
    finally:
        lc.disable(pipe)


def test_telemetry_reports_every_step_and_group():
    pipe, kwargs, cal = setup("tiny")
    schedule = lc.plan(cal, 0.6)
    telemetry = lc.enable(pipe, schedule)
    try:
        run(pipe, kwargs)
    finally:
        lc.disable(pipe)
    events = telemetry.events()
    assert [e["step"] for e in events] == list(range(STEPS))
    for event, row in zip(events, schedule.cells):
        for group, cell in zip(event["groups"], row):
            assert group["computed"] == cell.compute
            assert group["k"] == (None if cell.compute else cell.k)
            if cell.compute and event["step"] > 0:
                assert group["velocity_change"] > 0 and group["time_s"] > 0
            if not cell.compute:
                assert group["velocity_change"] is None
    assert telemetry.steps[0].contexts == {"cond", "uncond"}


def test_block_costs_are_measured_flops_at_the_real_token_counts():
    """FLUX's double blocks run separate weights on image and text tokens; a single block runs one set on all
    tokens. Their FLOPs are equal, so a calibration splits the 2 double + 2 single blocks in halves (the
    weight count would weigh a double block 2.4x a single one)."""
    from layercache.evaluation.metrics import BlockCounter
    from layercache.groups import block_cost, measure_block_flops

    pipe, kwargs, cal = setup("flux")
    blocks = [b for _, b in find_blocks(pipe.transformer)]
    assert block_cost(blocks[0]) > 2 * block_cost(blocks[-1])
    assert cal.group_starts == [0, 2] and cal.group_costs == pytest.approx([0.5, 0.5], abs=0.01)
    # the FLOPs are the Linear layers' (2 per multiply-add) plus attention's, which torch cannot count on the
    # CPU's fused kernel without our formula: QK^T and AV, each 2 * heads * tokens^2 * head_dim per call
    with BlockCounter(pipe.transformer) as counter:
        flops, other = measure_block_flops(pipe.transformer, lambda: pipe(**kwargs, num_inference_steps=1,
                                                                          output_type="latent"))
    calls = int(counter.counts[0])
    tokens = 8 * 8 + kwargs["prompt_embeds"].shape[1]
    attention = calls * 2 * 2 * 2 * tokens**2 * 16
    assert sum(flops) == 2 * counter.macs + len(blocks) * attention
    assert other > 0
