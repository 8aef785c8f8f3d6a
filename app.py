"""LayerCache, live: the uncached and the cached sampler side by side, streaming every step.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override)

A thin Gradio layer: widgets in, runner events out. Models, calibrations and runs live in
`layercache.studio` (runner, workbench), the cache methods in `layercache.methods` (the dropdown shows their
labels), figures in `layercache.studio.viz`, Space metadata and defaults in `space.yaml`.
"""

import math
import os
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from layercache.heterogeneity import heterogeneity
from layercache.methods import Uncached, app_methods
from layercache.models.registry import MODELS, availability, pipeline_call
from layercache.models.tiny.pipeline import parse_prompt
from layercache.planner import check_budget
from layercache.studio import history, viz
from layercache.studio.space import defaults as space_defaults
from layercache.studio.workbench import Workbench

try:  # ZeroGPU on Hugging Face Spaces: `import spaces` must come before CUDA starts
    import spaces
    GPU = spaces.GPU
except ImportError:
    def GPU(duration=None):
        return lambda fn: fn

DEFAULTS = space_defaults()
# ZeroGPU runs each GPU call in a worker process, out of reach of stop(): there Gradio's own cancel stops it
ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
METHODS = app_methods()  # label -> layercache.methods.Method
MAX_STEPS = 200
MAX_K = 4          # the calibrations' largest K
BUDGET_MIN = 0.1   # the slider's lower end: every method plans at every budget from here to 1
bench = Workbench()
STOPPED = "**Stopped.** The next run starts clean."
HISTORY_DIR = Path(tempfile.gettempdir()) / "layercache_history"   # one folder per session, for the downloads
_stopped_at: dict = {}  # session -> time of its last Stop
_streaming: set = set()  # sessions whose run is streaming now

HOW_TO_READ = """
**Groups.** The transformer's blocks are cut into *groups* of consecutive blocks (group 0 is the shallowest).
Each group adds a *residual* to the image and text streams. LayerCache decides per step and per group whether to
run the group or to reuse its residual.

**K.** A reused residual is extrapolated from the group's last *computed* residuals (predictions are never
extrapolated again): K = 1 is plain reuse of the last one; K ≥ 2 fits a slope over the last K computed steps (the
"JVP") and follows it. The planner picks K per group and step from the calibration.

**Heatmaps** (x = step, y = group): *velocity change* is how much the group's residual moved since the previous
step (only where it was computed); *computed/reused* shows the cache decisions (green = run, orange = reused;
in-between = part of the group's blocks ran); *chosen K* is the predictor span used where a group was reused.

**Methods.** *LayerCache* picks the computed steps by an exact search over the calibration's error model and
reuses every group on the others, each with its own predictor and K; *per group* lets each group run on its own
steps (the budget split across groups; a group run on inputs that predicted groups upstream made can drift, which
the error model cannot see); *K=1* is LayerCache with plain reuse only (no slope); *MeanCache* skips whole steps
(no block runs) and extrapolates the model's output; *FirstBlockCache* (diffusers) runs the first block and skips
the rest when its output changed less than the threshold.

**Numbers.** PSNR/SSIM compare the cached image with the uncached one (same seed). *Compute speed-up* = blocks
run uncached / blocks run cached; *wall speed-up* = uncached lane time / cached lane time (lanes take turns, so
both clocks are honest). The difference image is |cached − uncached| × 10.
"""


def configure_torch():
    """Tiny models on a shared CPU: one intra-op thread is several times faster than two fighting for cores."""
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("LAYERCACHE_THREADS", "1")))


def model_choices():
    return [(entry.label if availability(key)[0] else f"{entry.label} — unavailable", key)
            for key, entry in MODELS.items()]


def check_inputs(model, prompt, seed, steps, budget, groups, max_k, method):
    """Everything a user or API caller can get wrong, as one readable message (shown as gr.Error)."""
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not on the list: {', '.join(MODELS)}")
    ok, reason = availability(model)
    if not ok:
        raise ValueError(reason)
    if MODELS[model].bundled:
        parse_prompt(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty")
    for name, value, low, high in (("seed", seed, 0, 2**63 - 1), ("steps", steps, 2, MAX_STEPS),
                                   ("number of groups", groups, 1, 1000), ("largest K", max_k, 1, 16)):
        if value is None or not float(value).is_integer() or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    check_budget(budget)
    if method not in METHODS:
        raise ValueError(f"method must be one of: {', '.join(METHODS)}; got {method!r}")


def _fmt(value, digits=3):
    return "inf" if value is not None and math.isinf(value) else None if value is None else round(value, digits)


@GPU(duration=DEFAULTS["gpu_duration_s"])
def run(model, prompt, seed, steps, guidance, budget, groups, max_k, method, threshold, clicked_at=None,
        progress=gr.Progress(), request: gr.Request = None):
    """Streams (status, uncached preview, cached preview, 3 heatmaps, metrics, difference, slider, calibration).
    A Stop ends the stream with a "Stopped" status of its own: sent by any other event, it could be drawn
    before the last step update still in flight and be overwritten by it."""
    session = _session(request)
    started = time.monotonic() if clicked_at is None else clicked_at
    stopped_update = (STOPPED, *[gr.skip()] * 9)

    def stopped():  # a Stop since the click: checked again between steps, as it may come before the run exists
        return _stopped_at.get(session, -math.inf) > started

    if stopped():
        yield stopped_update  # stopped while it waited in the queue
        return
    _streaming.add(session)
    stream = None
    try:
        check_inputs(model, prompt, seed, steps, budget, groups, max_k, method)
        seed, steps, groups, max_k = int(seed), int(steps), int(groups), int(max_k)
        runner = bench.runner(model)
        def report(done, total, desc="calibrating"):
            progress(done / total, desc=desc)

        cached, source = bench.method(model, method, steps, groups, budget, max_k, threshold, progress=report)
        call = pipeline_call(model, prompt, guidance)
        grids = viz.empty_grids(steps, groups)
        skip = [gr.skip()] * 3
        stream = runner.run(call, seed, steps, cached, groups)
        for event in stream:
            if stopped():
                break
            if event["kind"] == "step":
                viz.record_step(grids, event)
                t = event["elapsed_s"]
                status = (f"**Step {event['step'] + 1}/{steps}** · σ = {event['sigma']:.3f} · "
                          f"uncached {t['uncached']:.2f} s · cached ({cached.label}) {t['cached']:.2f} s")
                yield (status, viz.to_display(event["previews"]["uncached"]),
                       viz.to_display(event["previews"]["cached"]), *viz.heatmaps(grids, max_k), *skip,
                       source or "not used by this method")
            else:
                yield final_outputs(event, grids, max_k, source)
                return
        yield stopped_update
    except ValueError as err:
        raise gr.Error(" ".join(str(err).split())) from None
    finally:
        if stream is not None:
            stream.close()  # ends the run and detaches the cache if we left the loop early
        _streaming.discard(session)


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "local"


def final_outputs(event, grids, max_k, source):
    m, t, images = event["metrics"], event["elapsed_s"], event["images"]
    metrics = {"method": event["method"], "psnr_db": _fmt(m["psnr"], 2), "ssim": _fmt(m["ssim"], 4),
               "lpips": _fmt(m["lpips"], 4), "wall_speedup": _fmt(m["wall_speedup"], 2),
               "compute_speedup": _fmt(m["compute_speedup"], 2), "compute_fraction": _fmt(m["compute_fraction"]),
               "time_uncached_s": _fmt(t["uncached"], 2), "time_cached_s": _fmt(t["cached"], 2)}
    if m["lpips"] is None:
        metrics["lpips_note"] = m["lpips_reason"]
    status = (f"**Done: {event['num_steps']} steps.** PSNR {metrics['psnr_db']} dB · SSIM {metrics['ssim']} · "
              f"speed-up {metrics['wall_speedup']}× wall, {metrics['compute_speedup']}× compute")
    before, after = viz.to_display(images["uncached"]), viz.to_display(images["cached"])
    diff = viz.to_display(viz.difference_image(images["cached"], images["uncached"]))
    return (status, before, after, *viz.heatmaps(grids, max_k), metrics, diff, (before, after),
            source or "not used by this method")


@GPU(duration=DEFAULTS["gpu_duration_s"])
def explore(model, prompt, seed, steps, groups, max_k, guidance, progress=gr.Progress()):
    try:
        check_inputs(model, prompt, seed, steps, 1.0, groups, max_k, "LayerCache")
        progress(0, desc="running the uncached model once")
        cal = bench.explore(model, pipeline_call(model, prompt, guidance), int(seed), int(steps),
                            int(groups), int(max_k))
    except ValueError as err:
        raise gr.Error(" ".join(str(err).split())) from None
    measure = heterogeneity(cal)
    note = f"**{measure.summary()}**\n\n{measure.table()}"
    return viz.velocity_figure(cal.velocity_change), viz.stability_figure(cal), note


def stop(request: gr.Request = None):
    """Stops this session's run, started or queued (the run reports it); other sessions' runs go on."""
    session = _session(request)
    _stopped_at[session] = time.monotonic()
    if session in _streaming:
        bench.cancel_all()  # runs go one at a time (concurrency_id "device"): the active one is this session's


def record_run(rows, metrics, model, method, steps, budget, groups, max_k, request: gr.Request = None):
    """After a run: its row in this session's history (gr.State: never shared), the Pareto and the exports."""
    settings = {"model": model, "method": method, "steps": int(steps), "budget": float(budget),
                "groups": int(groups), "max_k": int(max_k)}
    rows = history.add_run(rows or [], metrics, settings)
    exports = history.write_exports(rows, HISTORY_DIR / _session(request)) if rows else None
    background = history.benchmark_records(model, int(steps))
    return rows, history.table(rows), history.pareto(rows, background, list(METHODS)), exports


def on_model(model):
    entry = MODELS[model]
    ok, reason = availability(model)
    note = f"{'Available' if ok else '**Unavailable**'}: {reason}. Prompt: {entry.prompt_hint}."
    return note, gr.update(value=entry.default_steps), gr.update(value=entry.default_guidance)


def ideal_speedup(budget):
    try:
        b = check_budget(budget)
    except ValueError as err:
        return f"⚠️ {err}"
    return f"Ideal speed-up at this budget: **{1 / b:.2f}×** (runs {b:.0%} of the block compute)"


def on_method(method):
    entry = METHODS.get(method)
    by_threshold = entry is not None and entry.uses_threshold
    return (gr.update(visible=by_threshold), gr.update(interactive=not by_threshold),
            gr.update(interactive=entry is not None and entry.uses_k))


def describe_calibration(model, steps, groups):
    try:
        source, path = bench.calibration_source(model, int(steps), int(groups))
    except (ValueError, TypeError):
        return ""
    return {"shipped": f"shipped: {path}", "cached": f"calibrated earlier: {path}",
            "to calibrate": f"none yet: calibrated on first Run (a few seconds), then kept at {path}"}[source]


def build_demo() -> gr.Blocks:
    d = DEFAULTS
    steps0, groups0 = d["steps"], d["groups"]
    with gr.Blocks(title="LayerCache") as demo:
        gr.Markdown("# LayerCache — layer-wise caching, live\nThe same seed runs twice in lockstep: uncached "
                    "(left) and cached (right). Every step shows both clean-image estimates and, per layer group, "
                    "what the cache did.")
        with gr.Accordion("How to read this", open=False):
            gr.Markdown(HOW_TO_READ)
        with gr.Tab("Compare"), gr.Row():
            with gr.Column(scale=1, min_width=300):
                model = gr.Dropdown(model_choices(), value=d["model"], label="Model")
                model_note = gr.Markdown(on_model(d["model"])[0])
                prompt = gr.Textbox(d["prompt"], label="Prompt", placeholder=MODELS[d["model"]].prompt_hint)
                with gr.Row():
                    seed = gr.Number(d["seed"], label="Seed", precision=0, minimum=0)
                    steps = gr.Slider(2, MAX_STEPS, d["steps"], step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(1.0, 10.0, d["guidance"], step=0.5, label="Guidance")
                method = gr.Dropdown(list(METHODS), value=d["method"], label="Cached lane's method")
                budget = gr.Slider(BUDGET_MIN, 1.0, d["budget"], step=0.01,
                                   label="Compute budget (fraction of blocks run)")
                speedup = gr.Markdown(ideal_speedup(d["budget"]))
                threshold = gr.Slider(0.0, 0.5, d["fbc_threshold"], step=0.01, visible=False,
                                      label="FirstBlockCache threshold (skip when the first block changes less)")
                with gr.Row():
                    groups = gr.Slider(1, 12, groups0, step=1, label="Groups")
                    max_k = gr.Slider(1, MAX_K, d["max_k"], step=1, label="Largest K")
                calibration = gr.Textbox(describe_calibration(d["model"], steps0, groups0), label="Calibration in use",
                                         interactive=False, lines=2)
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=2):
                status = gr.Markdown("Press **Run**.", elem_id="status")
                with gr.Row():
                    uncached = gr.Image(label="Uncached (x₀ estimate)", format="png", height=256, elem_id="uncached",
                                        interactive=False)
                    cached = gr.Image(label="Cached (x₀ estimate)", format="png", height=256, elem_id="cached",
                                      interactive=False)
                with gr.Row():
                    first = viz.heatmaps(viz.empty_grids(steps0, groups0), d["max_k"])
                    plots = [gr.Plot(fig, show_label=False, elem_id=f"heat_{key}")
                             for fig, key in zip(first, viz.HEATMAPS)]
                with gr.Row():
                    metrics = gr.JSON(label="Metrics vs the uncached image", elem_id="metrics")
                    diff = gr.Image(label="Difference ×10", format="png", height=256, interactive=False)
                    slider = gr.ImageSlider(label="Before / after", format="png", max_height=256)
                with gr.Row():
                    pareto_plot = gr.Plot(history.pareto([]), show_label=False, elem_id="pareto")
                with gr.Accordion("Run history (this session only)", open=True):
                    history_table = gr.Dataframe(headers=list(history.COLUMNS), value=[], interactive=False,
                                                 elem_id="history", wrap=True)
                    history_files = gr.File(label="Download the history (CSV, JSON)", file_count="multiple",
                                            interactive=False, elem_id="history-files")
        with gr.Tab("Explore: layer-wise heterogeneity"):
            gr.Markdown("Runs the **uncached** model once on the prompt and seed above and records every group's "
                        "residual: how much each group changes per step, and how well a K-step slope predicts it.")
            explore_btn = gr.Button("Explore", elem_id="explore")
            with gr.Row():
                velocity_plot = gr.Plot(viz.velocity_figure(np.full((steps0, groups0), np.nan)), show_label=False)
                stability_plot = gr.Plot(viz.stability_figure(None), show_label=False)
            explore_note = gr.Markdown()

        inputs = [model, prompt, seed, steps, guidance, budget, groups, max_k, method, threshold]
        outputs = [status, uncached, cached, *plots, metrics, diff, slider, calibration]
        clicked_at = gr.State()
        runs = gr.State([])
        run_event = run_btn.click(time.monotonic, None, clicked_at, queue=False, api_visibility="private").then(
            run, [*inputs, clicked_at], outputs, api_name="run", concurrency_id="device", show_progress_on=[status])
        run_event.success(record_run, [runs, metrics, model, method, steps, budget, groups, max_k],
                          [runs, history_table, pareto_plot, history_files], api_visibility="private", queue=False)
        explore_event = explore_btn.click(explore, [model, prompt, seed, steps, groups, max_k, guidance],
                                          [velocity_plot, stability_plot, explore_note], api_name="explore",
                                          concurrency_id="device", show_progress_on=[explore_note])
        # not queued: a Stop must get through a full queue and land before a Run clicked right after it
        stop_btn.click(stop, None, None, cancels=[explore_event, *([run_event] if ZERO_GPU else [])], queue=False,
                       api_name="stop")
        model.change(on_model, model, [model_note, steps, guidance], api_visibility="private")
        budget.change(ideal_speedup, budget, speedup, api_visibility="private", queue=False)
        method.change(on_method, method, [threshold, budget, max_k], api_visibility="private", queue=False)
        for trigger in (model, steps, groups):
            trigger.change(describe_calibration, [model, steps, groups], calibration, api_visibility="private",
                           queue=False)
    demo.queue(default_concurrency_limit=1, max_size=d["queue_size"])
    return demo


def warm_up():
    """Load the default model and calibration, and run two steps, so the first Run streams at once."""
    configure_torch()
    d = DEFAULTS
    runner = bench.runner(d["model"])
    bench.method(d["model"], d["method"], d["steps"], d["groups"], d["budget"], d["max_k"])
    for _ in runner.run({"prompt": d["prompt"], "guidance_scale": d["guidance"]}, 0, 2, Uncached(), d["groups"]):
        pass


if __name__ == "__main__":
    warm_up()
    build_demo().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
