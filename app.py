"""LayerCache, live: the uncached and the cached sampler side by side, streaming every step.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override)

A thin Gradio layer: widgets in, runner events out. Models, calibrations and runs live in
`layercache.studio` (runner, workbench), the cache methods in `layercache.methods` (the dropdown shows their
labels), figures in `layercache.studio.viz`, Space metadata and defaults in `space.yaml`.
"""

import functools
import math
import os
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from layercache.groups import find_blocks, model_id
from layercache.heterogeneity import heterogeneity
from layercache.methods import LayerCacheSetting, Uncached, app_methods
from layercache.models.registry import MODELS, pipeline_call
from layercache.models.tiny.pipeline import parse_prompt
from layercache.planner import check_budget
from layercache.predictors import PREDICTORS
from layercache.studio import editor, gpu_time, history, lesson, serving, viz
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
PAINTED = "Your schedule"  # the cached lane's label when it runs the painted schedule
METHOD_NAMES = [*METHODS, PAINTED]  # the Pareto's colours, in this order
LESSON_INPUTS = ("model", "prompt", "seed", "steps", "guidance", "method", "budget", "groups", "max_k")
MAX_STEPS = 200
MAX_K = 4          # the calibrations' largest K
BUDGET_MIN = 0.1   # the slider's lower end: every method plans at every budget from here to 1
bench = Workbench()
STOPPED = "**Stopped.** The next run starts clean."
READY = ("Press **Run**: the same seed runs twice in lockstep, uncached (left) and cached (right), showing both "
         "clean-image estimates and what the cache did per layer group, every step.")
HISTORY_DIR = Path(tempfile.gettempdir()) / "layercache_history"   # one folder per session, for the downloads
_stopped_at: dict = {}  # session -> time of its last Stop
_streaming: set = set()  # sessions whose run is streaming now

HOW_TO_READ = """
**Groups.** The transformer's blocks are cut into *groups* of consecutive blocks (group 0 is the shallowest).
Each group adds a *residual* to the image and text streams. LayerCache decides per step and per group whether to
run the group or to reuse its residual (or, in TaylorSeer's form, which the planner may choose, its output).

**K.** A reused residual is extrapolated from the group's last *computed* residuals (predictions are never
extrapolated again): K = 1 is plain reuse of the last one; K ≥ 2 fits a slope over the last K computed steps (the
"JVP") and follows it. The planner picks K per group and step from the calibration, up to *Largest K*, which also
bounds the output estimator on skipped steps. MeanCache's estimator is not bounded by it: at largest K 1 LayerCache
runs plain reuse against MeanCache's full estimator and loses by 1.1–3.8 dB on the bundled models (15 of 18
settings measured), which is what the slope buys; at K 2 and above it is ahead or level in all but one.

**Heatmaps** (x = step, y = group): *velocity change* is how much the group's residual moved since the previous
step (only where it was computed); *computed/reused* shows the cache decisions (blue = run, orange = reused;
in-between = part of the group's blocks ran); *chosen K* is the predictor span used where a group was reused.
The colours are colour-blind-safe: blue = run, orange = reused (Okabe-Ito); Viridis and Blues for the values.

**Paint your own schedule** (under the heatmaps): start from the planner's plan, click cells to compute or reuse
them, and run it in the cached lane; the schedule downloads as JSON, and a JSON schedule uploads.

**Methods.** *LayerCache* picks the computed steps by an exact search over the calibration's error model and
reuses every group on the others, each with its own predictor and K — or, where that checks out better, skips the
reused steps whole and predicts the model's output ("v" in the painted schedule); *per group* lets each group run
on its own steps (the budget split across groups; a group run on inputs that predicted groups upstream made can
drift, which the error model cannot see); *K=1* is LayerCache with plain reuse only (no slope); *MeanCache* skips
whole steps (no block runs) and extrapolates the model's output; *FirstBlockCache* (diffusers) runs the first
block and skips the rest when its output changed less than the threshold.

**Numbers.** PSNR/SSIM compare the cached image with the uncached one (same seed). *Compute speed-up* = blocks
run uncached / blocks run cached; *wall speed-up* = uncached lane time / cached lane time (lanes take turns, so
both clocks are honest). The difference image is |cached − uncached| × 10: black where the images agree,
white where they differ by a tenth of the range or more.
"""


def configure_torch():
    """Tiny models on a shared CPU: one intra-op thread is several times faster than two fighting for cores."""
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("LAYERCACHE_THREADS", "1")))


def model_choices():
    return [(entry.label if bench.availability(key)[0] else f"{entry.label} — unavailable", key)
            for key, entry in MODELS.items()]


def check_settings(model, steps, budget, groups, max_k):
    """The settings a run and a schedule share, each with a message that says what to change."""
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not on the list: {', '.join(MODELS)}")
    ok, reason = bench.availability(model)
    if not ok:
        raise ValueError(reason)
    for name, value, low, high in (("steps", steps, 2, MAX_STEPS), ("number of groups", groups, 1, 1000),
                                   ("largest K", max_k, 1, 16)):
        if value is None or not float(value).is_integer() or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    check_budget(budget)


def check_inputs(model, prompt, seed, steps, budget, groups, max_k, method):
    """Everything a user or API caller can get wrong, as one readable message (shown as gr.Error)."""
    check_settings(model, steps, budget, groups, max_k)
    if MODELS[model].bundled:
        parse_prompt(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty")
    if seed is None or not float(seed).is_integer() or not 0 <= seed <= 2**63 - 1:
        raise ValueError(f"seed must be a whole number from 0 to {2**63 - 1}, got {seed!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of: {', '.join(METHODS)}; got {method!r}")


def _fmt(value, digits=3):
    return "inf" if value is not None and math.isinf(value) else None if value is None else round(value, digits)


# what a run streams, by name (positions in the Run / "Run this schedule" outputs); see _emit
OUTPUTS = ("status", "uncached", "cached", *(f"heat_{key}" for key in viz.HEATMAPS), "metrics_json", "diff", "slider",
           "calibration", "metrics", "history", "pareto", "history_files", "runs")


def _emit(**values) -> tuple:
    """One streamed update: the named outputs change, the others are left as they are."""
    return tuple(values.get(name, gr.skip()) for name in OUTPUTS)


def _heatmaps(grids, max_k) -> dict:
    return {f"heat_{key}": fig for key, fig in zip(viz.HEATMAPS, viz.heatmaps(grids, max_k))}


def run_seconds(model, prompt, seed, steps, guidance, budget, groups, max_k, method, *args, **kwargs):
    """`run`'s GPU duration (ZeroGPU calls it with run's arguments): a setting's first run also calibrates and
    checks its plan, in the same call."""
    return gpu_time.run(bench, model, steps, groups, budget, method)


def schedule_seconds(schedule, model, prompt, seed, steps, *args, **kwargs):
    return gpu_time.lanes(model, steps)


def explore_seconds(model, prompt, seed, steps, *args, **kwargs):
    return gpu_time.explore(model, steps)


@GPU(duration=run_seconds)
def run(model, prompt, seed, steps, guidance, budget, groups, max_k, method, threshold, runs=None, clicked_at=None,
        progress=gr.Progress(), request: gr.Request = None):
    """Streams the two lanes (see OUTPUTS): the cached lane runs `method` planned for `budget`."""
    def prepare(report):
        check_inputs(model, prompt, seed, steps, budget, groups, max_k, method)
        return bench.method(model, method, int(steps), int(groups), budget, int(max_k), threshold, progress=report)

    settings = {"model": model, "steps": steps, "budget": budget, "groups": groups, "max_k": max_k}
    yield from _stream(prepare, prompt, seed, guidance, settings, runs, clicked_at, progress, request)


@GPU(duration=schedule_seconds)
def run_schedule(schedule, model, prompt, seed, steps, guidance, groups, max_k, runs=None, clicked_at=None,
                 progress=gr.Progress(), request: gr.Request = None):
    """Streams the two lanes with the painted schedule (this session's editor) in the cached lane."""
    def prepare(report):
        check_inputs(model, prompt, seed, steps, 1.0, groups, max_k, "LayerCache")
        if not schedule:
            raise ValueError("there is no schedule to run yet: press “Start from the planner” first")
        fitted = _fitted(schedule, model, steps, groups)
        return LayerCacheSetting(fitted, PAINTED, budget=round(fitted.compute_fraction, 3)), None

    settings = {"model": model, "steps": steps, "budget": None, "groups": groups, "max_k": max_k}
    yield from _stream(prepare, prompt, seed, guidance, settings, runs, clicked_at, progress, request)


def _stream(prepare, prompt, seed, guidance, settings, runs, clicked_at, progress, request):
    """A Stop ends the stream with a "Stopped" status of its own: sent by any other event, it could be drawn
    before the last step update still in flight and be overwritten by it."""
    session = _session(request)
    started = time.monotonic() if clicked_at is None else clicked_at

    def stopped():  # a Stop since the click: checked again between steps, as it may come before the run exists
        return _stopped_at.get(session, -math.inf) > started

    if stopped():
        yield _emit(status=STOPPED)  # stopped while it waited in the queue
        return
    _streaming.add(session)
    stream = None
    try:
        def report(done, total, desc="calibrating"):
            progress(done / total, desc=desc)

        cached, source = prepare(report)
        source = source or "not used by this method"
        steps, groups, max_k = int(settings["steps"]), int(settings["groups"]), int(settings["max_k"])
        runner = bench.runner(settings["model"])
        call = pipeline_call(settings["model"], prompt, guidance)
        grids = viz.empty_grids(steps, groups)
        stream = runner.run(call, int(seed), steps, cached, groups)
        for event in stream:
            if stopped():
                break
            if event["kind"] == "step":
                viz.record_step(grids, event)
                t = event["elapsed_s"]
                status = (f"**Step {event['step'] + 1}/{steps}** · σ = {event['sigma']:.3f} · "
                          f"uncached {t['uncached']:.2f} s · cached ({cached.label}) {t['cached']:.2f} s")
                yield _emit(status=status, uncached=viz.to_display(event["previews"]["uncached"]),
                            cached=viz.to_display(event["previews"]["cached"]), calibration=source,
                            **_heatmaps(grids, max_k))
            else:
                metrics = figures(event)
                yield _emit(**final_outputs(event, metrics, grids, max_k, source),
                            **_history(runs, metrics, settings, session))
                return
        yield _emit(status=STOPPED)
    except ValueError as err:
        raise gr.Error(" ".join(str(err).split())) from None
    finally:
        if stream is not None:
            stream.close()  # ends the run and detaches the cache if we left the loop early
        _streaming.discard(session)


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "local"


def figures(event) -> dict:
    """A final event's metrics, rounded for display and the history."""
    m, t = event["metrics"], event["elapsed_s"]
    metrics = {"method": event["method"], "psnr_db": _fmt(m["psnr"], 2), "ssim": _fmt(m["ssim"], 4),
               "lpips": _fmt(m["lpips"], 4), "wall_speedup": _fmt(m["wall_speedup"], 2),
               "compute_speedup": _fmt(m["compute_speedup"], 2), "compute_fraction": _fmt(m["compute_fraction"]),
               "time_uncached_s": _fmt(t["uncached"], 2), "time_cached_s": _fmt(t["cached"], 2)}
    if m["lpips"] is None:
        metrics["lpips_note"] = m["lpips_reason"]
    return metrics


def final_outputs(event, metrics, grids, max_k, source) -> dict:
    images = event["images"]
    status = (f"**Done: {event['num_steps']} steps.** PSNR {metrics['psnr_db']} dB · SSIM {metrics['ssim']} · "
              f"speed-up {metrics['wall_speedup']}× wall, {metrics['compute_speedup']}× compute")
    before, after = viz.to_display(images["uncached"]), viz.to_display(images["cached"])
    diff = viz.to_display(viz.difference_image(images["cached"], images["uncached"]))
    return dict(status=status, uncached=before, cached=after, **_heatmaps(grids, max_k), metrics_json=metrics,
                diff=diff, slider=(before, after), calibration=source, metrics=viz.readout(metrics))


def _history(runs, metrics, settings, session) -> dict:
    """The finished run's row in this session's history (gr.State: never shared), the Pareto and the exports."""
    row_settings = {**settings, "steps": int(settings["steps"]), "groups": int(settings["groups"]),
                    "max_k": int(settings["max_k"]),
                    "budget": metrics["compute_fraction"] if settings["budget"] is None else float(settings["budget"])}
    rows = history.add_run(runs or [], metrics, row_settings)
    exports = history.write_exports(rows, HISTORY_DIR / session) if rows else None
    background = history.benchmark_records(settings["model"], row_settings["steps"])
    return dict(runs=rows, history=history.table(rows), pareto=history.pareto(rows, background, METHOD_NAMES),
                history_files=exports)


@GPU(duration=explore_seconds)
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


# --- paint your own schedule (layercache/studio/editor.py): every edit is checked there; a bad one changes nothing

def _schedule_updates(schedule, request, note=None) -> tuple:
    """(schedule state, map, note, download) for a new schedule."""
    path = editor.write(schedule, HISTORY_DIR / _session(request))
    return schedule, editor.table(schedule), note or editor.summary(schedule), path


def _refused(err) -> tuple:
    message = " ".join(str(err).split())
    return gr.skip(), gr.skip(), f"⚠️ **Not changed:** {message}", gr.skip()


def paint(schedule, scope, predictor, k, evt: gr.SelectData, request: gr.Request = None):
    """A click on the map: toggles the cell (or its whole step) between computed and reused."""
    row, column = evt.index
    if column == 0:
        return _refused("click a step's cell, right of the group names")
    try:
        return _schedule_updates(editor.toggle(schedule, int(column) - 1, int(row), scope == "whole step",
                                               predictor, int(k)), request)
    except ValueError as err:
        return _refused(err)


def compute_every_cell(schedule, request: gr.Request = None):
    try:
        return _schedule_updates(editor.compute_all(schedule), request)
    except ValueError as err:
        return _refused(err)


def plan_seconds(model, steps, budget, groups, *args, **kwargs):
    return gpu_time.run(bench, model, steps, groups, budget, "LayerCache", lanes=0)


@GPU(duration=plan_seconds)
def planner_schedule(model, steps, budget, groups, max_k, progress=gr.Progress(), request: gr.Request = None):
    """What LayerCache would run at the current settings, to paint on."""
    try:
        check_settings(model, steps, budget, groups, max_k)
        cache, _ = bench.method(model, "LayerCache", int(steps), int(groups), budget, int(max_k),
                                progress=lambda done, total, desc="calibrating": progress(done / total, desc=desc))
    except ValueError as err:
        return _refused(err)
    return _schedule_updates(cache.schedule.to_json(), request)


def _fitted(schedule, model, steps, groups):
    """The schedule, if it fits this model, step count and number of groups (else ValueError, see editor)."""
    transformer = bench.runner(model).pipes["uncached"].transformer
    return editor.check_fits(schedule, model_id(transformer), len(find_blocks(transformer)), int(steps), int(groups))


def upload_schedule(path, model, steps, groups, request: gr.Request = None):
    """An uploaded schedule replaces the map only if it is valid and fits the model, step count and groups."""
    try:
        check_settings(model, steps, 1.0, groups, 1)
        uploaded = editor.load_upload(path)
        _fitted(uploaded, model, steps, groups)
    except ValueError as err:
        return _refused(err)
    return _schedule_updates(uploaded, request, "Uploaded. " + editor.summary(uploaded))


def lesson_step(index):
    """A lesson button: sets the inputs for its step and opens its tab."""
    step = lesson.LESSON[index]
    values = [step.settings.get(name, gr.skip()) for name in LESSON_INPUTS]
    return (*values, gr.Tabs(selected=step.tab))


def on_model(model):
    entry = MODELS[model]
    ok, reason = bench.availability(model)
    note = f"{'Available' if ok else '**Unavailable**'}: {reason}. Prompt: {entry.prompt_hint}."
    return note, gr.update(value=entry.default_steps), gr.update(value=entry.default_guidance)


def ideal_speedup(budget):
    try:
        b = check_budget(budget)
    except ValueError as err:
        return f"⚠️ {err}"
    return f"Ideal speed-up **{1 / b:.2f}×** (runs {b:.0%} of the blocks)"


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


def build_demo(queue_size: int | None = None) -> gr.Blocks:
    d = {**DEFAULTS, "model": serving.initial_model(bench, fallback=DEFAULTS["model"])}
    steps0, groups0 = d["steps"], d["groups"]
    with gr.Blocks(title="LayerCache") as demo:
        gr.Markdown("## LayerCache — layer-wise caching, live <small>· new here? open the **Lesson** tab</small>")
        with gr.Tabs() as tabs:
            with gr.Tab("Compare", id="compare"), gr.Row():
                with gr.Column(scale=1, min_width=300):
                    model = gr.Dropdown(model_choices(), value=d["model"], label="Model", elem_id="model-box")
                    with gr.Row():
                        prompt = gr.Textbox(d["prompt"], label="Prompt", placeholder=MODELS[d["model"]].prompt_hint,
                                            scale=2, min_width=120)
                        seed = gr.Number(d["seed"], label="Seed", precision=0, minimum=0, scale=1, min_width=80)
                    with gr.Row():
                        steps = gr.Slider(2, MAX_STEPS, d["steps"], step=1, label="Steps", elem_id="steps",
                                          min_width=140)
                        guidance = gr.Slider(1.0, 10.0, d["guidance"], step=0.5, label="Guidance", min_width=140)
                    method = gr.Dropdown(list(METHODS), value=d["method"], label="Cached lane's method",
                                         elem_id="method")
                    budget = gr.Slider(BUDGET_MIN, 1.0, d["budget"], step=0.01, elem_id="budget",
                                       label="Compute budget (fraction of blocks run)")
                    speedup = gr.Markdown(ideal_speedup(d["budget"]))
                    threshold = gr.Slider(0.0, 0.5, d["fbc_threshold"], step=0.01, visible=False,
                                          label="FirstBlockCache threshold (skip when the first block changes less)")
                    with gr.Row():
                        groups = gr.Slider(1, 12, groups0, step=1, label="Groups", elem_id="groups", min_width=140)
                        max_k = gr.Slider(1, MAX_K, d["max_k"], step=1, label="Largest K", elem_id="max_k",
                                          min_width=140)
                    with gr.Row():
                        run_btn = gr.Button("Run", variant="primary", elem_id="run")
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    with gr.Accordion("Model and calibration", open=False):
                        model_note = gr.Markdown(on_model(d["model"])[0])
                        calibration = gr.Textbox(describe_calibration(d["model"], steps0, groups0),
                                                 label="Calibration in use", interactive=False, lines=2)
                with gr.Column(scale=2):
                    status = gr.Markdown(READY, elem_id="status")
                    with gr.Row():
                        uncached = gr.Image(label="Uncached (x₀ estimate)", format="png", height=256,
                                            elem_id="uncached", interactive=False)
                        cached = gr.Image(label="Cached (x₀ estimate)", format="png", height=256, elem_id="cached",
                                          interactive=False)
                    with gr.Row():
                        first = viz.heatmaps(viz.empty_grids(steps0, groups0), d["max_k"])
                        plots = [gr.Plot(fig, show_label=False, elem_id=f"heat_{key}")
                                 for fig, key in zip(first, viz.HEATMAPS)]
                    with gr.Row():
                        with gr.Column(min_width=300):
                            metrics = gr.Markdown(viz.readout(None), elem_id="metrics")
                        diff = gr.Image(label=f"Difference: |cached − uncached| × {viz.DIFFERENCE_GAIN:g} (black = "
                                        f"equal, white = off by ≥ {1 / viz.DIFFERENCE_GAIN:g})", format="png",
                                        height=256, interactive=False, elem_id="difference")
                        slider = gr.ImageSlider(label="Before / after", format="png", max_height=256)
                    with gr.Accordion("All figures (JSON)", open=False):
                        metrics_json = gr.JSON(label="Metrics vs the uncached image", elem_id="metrics-json")
                    with gr.Accordion("Paint your own schedule", open=False, elem_id="schedule-accordion"):
                        gr.Markdown("Rows are groups, columns are steps. **Click a cell** to switch it between "
                                    "computed (**run**, blue) and reused (orange: the predictor and K below; K1 = "
                                    "plain reuse, K2+ = the JVP slope). Then **Run this schedule** runs it in the "
                                    "cached lane.")
                        with gr.Row():
                            from_planner = gr.Button("Start from the planner (current settings)",
                                                     elem_id="schedule-from-planner")
                            all_computed = gr.Button("Compute every cell", elem_id="schedule-all")
                            upload = gr.UploadButton("Upload a schedule (JSON)", file_types=[".json"],
                                                     elem_id="schedule-upload")
                        with gr.Row():
                            scope = gr.Radio(["cell", "whole step"], value="cell", label="A click toggles",
                                             elem_id="paint-scope")
                            predictor = gr.Radio(list(PREDICTORS), value="slope", label="Reused cells predict with",
                                                 elem_id="paint-predictor")
                            paint_k = gr.Slider(1, MAX_K, 2, step=1, label="K of reused cells", elem_id="paint-k")
                        editor_note = gr.Markdown(editor.summary(None), elem_id="schedule-note")
                        editor_map = gr.Dataframe(editor.table(None), interactive=False, elem_id="schedule-editor",
                                                  max_height=260)
                        with gr.Row():
                            run_painted = gr.Button("Run this schedule", variant="primary", elem_id="run-schedule")
                            schedule_file = gr.File(label="Download this schedule", interactive=False,
                                                    elem_id="schedule-file")
                    pareto_plot = gr.Plot(history.pareto([]), show_label=False, elem_id="pareto")
                    with gr.Accordion("Run history (this session only)", open=True):
                        history_table = gr.Dataframe(headers=list(history.COLUMNS), value=[], interactive=False,
                                                     elem_id="history")
                        history_files = gr.File(label="Download the history (CSV, JSON)", file_count="multiple",
                                                interactive=False, elem_id="history-files")
            with gr.Tab("Explore: layer-wise heterogeneity", id="explore"):
                gr.Markdown("Runs the **uncached** model once on the prompt and seed of the Compare tab and records "
                            "every group's residual: how much each group changes per step, and how well a K-step "
                            "slope predicts it.")
                explore_btn = gr.Button("Explore", elem_id="explore")
                with gr.Row():
                    velocity_plot = gr.Plot(viz.velocity_figure(np.full((steps0, groups0), np.nan)), show_label=False)
                    stability_plot = gr.Plot(viz.stability_figure(None), show_label=False)
                explore_note = gr.Markdown()
            with gr.Tab("Lesson", id="lesson", elem_id="lesson"):
                gr.Markdown("Six steps for a class. Each button sets the inputs and opens the tab to use.")
                lesson_buttons = []
                for i, step in enumerate(lesson.LESSON):
                    with gr.Group():
                        gr.Markdown(f"**{step.title}** — {step.text}\n\n*Look at:* {step.look}")
                        lesson_buttons.append(gr.Button(f"Set up step {i + 1}", size="sm", elem_id=f"lesson-{i + 1}"))
            with gr.Tab("How to read this", id="help"):
                gr.Markdown(HOW_TO_READ)

        runs, schedule, clicked_at = gr.State([]), gr.State(None), gr.State()
        components = dict(status=status, uncached=uncached, cached=cached, metrics_json=metrics_json, diff=diff,
                          slider=slider, calibration=calibration, metrics=metrics, history=history_table,
                          pareto=pareto_plot, history_files=history_files, runs=runs,
                          **{f"heat_{key}": plot for key, plot in zip(viz.HEATMAPS, plots)})
        outputs = [components[name] for name in OUTPUTS]
        inputs = [model, prompt, seed, steps, guidance, budget, groups, max_k, method, threshold]
        run_event = run_btn.click(time.monotonic, None, clicked_at, queue=False, api_visibility="private").then(
            run, [*inputs, runs, clicked_at], outputs, api_name="run", concurrency_id="device",
            show_progress_on=[status])
        painted_event = run_painted.click(time.monotonic, None, clicked_at, queue=False, api_visibility="private").then(
            run_schedule, [schedule, model, prompt, seed, steps, guidance, groups, max_k, runs, clicked_at], outputs,
            api_name="run_schedule", concurrency_id="device", show_progress_on=[status])
        explore_event = explore_btn.click(explore, [model, prompt, seed, steps, groups, max_k, guidance],
                                          [velocity_plot, stability_plot, explore_note], api_name="explore",
                                          concurrency_id="device", show_progress_on=[explore_note])
        # not queued: a Stop must get through a full queue and land before a Run clicked right after it
        stop_btn.click(stop, None, None, cancels=[explore_event, *([run_event, painted_event] if ZERO_GPU else [])],
                       queue=False, api_name="stop")

        editing = [schedule, editor_map, editor_note, schedule_file]
        editor_map.select(paint, [schedule, scope, predictor, paint_k], editing, api_visibility="private",
                          queue=False)
        all_computed.click(compute_every_cell, schedule, editing, api_visibility="private", queue=False)
        from_planner.click(planner_schedule, [model, steps, budget, groups, max_k], editing, api_name="plan",
                           concurrency_id="device", show_progress_on=[editor_note])
        upload.upload(upload_schedule, [upload, model, steps, groups], editing, api_visibility="private")

        named = dict(model=model, prompt=prompt, seed=seed, steps=steps, guidance=guidance, method=method,
                     budget=budget, groups=groups, max_k=max_k)
        for i, button in enumerate(lesson_buttons):
            button.click(functools.partial(lesson_step, i), None, [*(named[n] for n in LESSON_INPUTS), tabs],
                         api_visibility="private", queue=False)

        model.change(on_model, model, [model_note, steps, guidance], api_visibility="private")
        budget.change(ideal_speedup, budget, speedup, api_visibility="private", queue=False)
        method.change(on_method, method, [threshold, budget, max_k], api_visibility="private", queue=False)
        for trigger in (model, steps, groups):
            trigger.change(describe_calibration, [model, steps, groups], calibration, api_visibility="private",
                           queue=False)
    demo.queue(default_concurrency_limit=1, max_size=queue_size or d["queue_size"])
    return demo


def warm_up():
    """Load the default model and calibration, and run two steps, so the first Run streams at once."""
    configure_torch()
    d = DEFAULTS
    runner = bench.runner(d["model"])
    bench.method(d["model"], d["method"], d["steps"], d["groups"], d["budget"], d["max_k"])
    for _ in runner.run(pipeline_call(d["model"], d["prompt"], d["guidance"]), 0, 2, Uncached(), d["groups"]):
        pass


def startup():
    """Load the hub models space.yaml serves (ZeroGPU: at startup, outside the GPU calls), then warm up."""
    serving.start(bench, zero_gpu=ZERO_GPU)
    warm_up()


if __name__ == "__main__":
    startup()
    build_demo().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
