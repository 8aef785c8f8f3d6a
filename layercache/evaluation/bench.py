"""The quality–speed benchmark: every method at every budget on the same evaluation set, one run.

    python -m layercache bench --model tiny --methods all --budgets 0.73,0.5,0.333 --seeds 100-119 \
        --steps 50 --out results.json --html pareto.html --png pareto.png --repeats 3
    accelerate launch --multi_gpu --num_processes 2 -m layercache bench ...   # seeds split across processes

On a machine without CUDA that launch starts N CPU processes talking over gloo (accelerate's `--cpu`
flag starts one process unless MPI is set up; `torchrun --nproc_per_node N -m layercache bench` works too).

Each image is compared with the uncached image for the same seed (PSNR capped at 100 dB so that means
stay finite; SSIM; LPIPS only where its weights exist), and read by the independent digit classifier
(`fidelity` = its accuracy against the requested digit). Compute fraction = block multiply-adds that
really ran / those of the uncached run (metrics.BlockCounter). Wall-clock speed-up = uncached time /
cached time of a one-image call, the two timed alternately in the same process, median of the repeats.

Seeds are cut into fixed batches of `--batch` images and whole batches are dealt to processes, so every
image is generated in the same batch whatever the number of processes: the merged per-image metrics
equal a single-process run's. Batch-level caches (FirstBlockCache) decide per batch, as they would in
any batched use.
"""

import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

PSNR_CAP = 100.0
DEFAULT_BUDGETS = "0.73,0.5,0.333"


def parse_seeds(text: str) -> list[int]:
    """'100-119' or '100,101,105' (or a mix) -> sorted unique seeds."""
    seeds = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"--seeds takes a range like 100-119 or a comma list of seeds >= 0, got {text!r}")
        lo, hi = int(lo), int(hi) if sep else int(lo)
        if hi < lo:
            raise ValueError(f"--seeds range {part!r} is empty (end before start)")
        seeds.update(range(lo, hi + 1))
    if not seeds:
        raise ValueError(f"--seeds gave no seeds ({text!r}); give a range like 100-119 or a comma list")
    return sorted(seeds)


def parse_budgets(text: str) -> list[float]:
    budgets = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--budgets takes numbers in (0, 1], got {part!r}") from None
        if not (0 < value <= 1):
            raise ValueError(f"budget {part} is outside (0, 1]: it is the fraction of block compute to execute")
        budgets.append(value)
    if not budgets:
        raise ValueError("--budgets is empty; give a comma list such as 0.73,0.5,0.333")
    return sorted(set(budgets), reverse=True)


def parse_steps(text) -> list[int]:
    """'50' or '10,20,30,50' -> sorted unique step counts, each from 2 to 1000."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(p.isdigit() and 2 <= int(p) <= 1000 for p in parts):
        raise ValueError(f"--steps takes step counts from 2 to 1000, one or a comma list such as 10,20,30,50; "
                         f"got {text!r}")
    return sorted({int(p) for p in parts})


def parse_methods(text: str) -> list[str]:
    from .baselines import METHODS, SELECTABLE

    names = [p.strip() for p in str(text).split(",") if p.strip()]
    if names == ["all"]:
        return list(METHODS)
    unknown = [n for n in names if n not in SELECTABLE]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from: all, {', '.join(SELECTABLE)}")
    if not names:
        raise ValueError("--methods is empty; give a comma list or 'all'")
    return list(dict.fromkeys(names))


def parse_reused_call_cost(text) -> float | None:
    """'measure' -> None (time it on this machine), else a fraction in [0, 1)."""
    from ..planner import check_reused_call_cost

    if str(text).strip() == "measure":
        return None
    try:
        return check_reused_call_cost(float(text))
    except ValueError:
        raise ValueError(f"--reused-call-cost takes 'measure' or a fully reused call's cost as a fraction of a "
                         f"computed call, in [0, 1) (e.g. 0.03); got {text!r}") from None


def _writable(path, flag):
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise ValueError(f"{flag} {path}: folder {Path(path).resolve().parent} does not exist")


def validate(args) -> dict:
    """Checks every argument before any model work; returns the parsed settings. Raises ValueError."""
    from ..models.registry import get_entry
    from ..models.tiny.sets import CALIBRATION_SEEDS, RECHECK_SEEDS

    entry = get_entry(args.model)
    if not entry.bundled:
        raise ValueError(f"bench runs the bundled models only (their evaluation set, classifier and calibrations "
                         f"are bundled); {args.model!r} is a hub model: use bench-gpu for it")
    methods, budgets, seeds = parse_methods(args.methods), parse_budgets(args.budgets), parse_seeds(args.seeds)
    overlap = sorted(set(seeds) & {*CALIBRATION_SEEDS, *RECHECK_SEEDS})
    if overlap:
        raise ValueError(f"seeds {overlap} are calibration seeds (calibration {list(CALIBRATION_SEEDS)}, recheck "
                         f"{list(RECHECK_SEEDS)}); evaluate on other seeds (e.g. 100-119)")
    steps = parse_steps(args.steps)
    if args.repeats < 0:
        raise ValueError(f"--repeats must be >= 0 (0 skips timing), got {args.repeats}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    for path, flag in ((args.out, "--out"), (args.html, "--html"), (args.png, "--png")):
        _writable(path, flag)
    earlier = _earlier_run(args.out, args.model, seeds, steps, args.batch) if args.update else None
    return {"methods": methods, "budgets": budgets, "seeds": seeds, "steps": steps, "earlier": earlier,
            "reused_call_cost": parse_reused_call_cost(args.reused_call_cost)}


def _earlier_run(path, model, seeds, steps, batch) -> dict:
    """The results file --update replaces records in: it must be a run on the same images (model, seeds, steps,
    batch), or its other methods' figures would not compare with the new ones."""
    try:
        earlier = json.loads(Path(path).read_text())
        meta, records = earlier["meta"], list(earlier["records"])
        found = {"--model": meta["model"], "--seeds": meta["seeds"], "--steps": meta["steps"], "--batch": meta["batch"]}
    except FileNotFoundError:
        raise ValueError(f"--update replaces records in --out, and {path} does not exist; drop --update to write "
                         f"a new file") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--update: {path} is not a bench results file ({type(err).__name__})") from None
    wanted = {"--model": model, "--seeds": seeds, "--steps": steps, "--batch": batch}
    differ = [f"{flag} {found[flag]} (asked {wanted[flag]})" for flag in wanted if found[flag] != wanted[flag]]
    if differ:
        raise ValueError(f"--update: {path} was run with {', '.join(differ)}; rerun on its images or write a new file")
    return {"meta": meta, "records": records}


def updated(earlier: dict, meta: dict, records: list) -> dict:
    """`earlier`'s results with `records` in place of its records of the same (method, steps, budget) (new ones
    appended): the methods not rerun keep their figures; the earlier run's meta is kept in the new one."""
    fresh = {(r["method"], r["steps"], r["budget"]): r for r in records}
    merged = [fresh.pop((r["method"], r["steps"], r["budget"]), r) for r in earlier["records"]] + list(fresh.values())
    runs = [{k: v for k, v in earlier["meta"].items() if k != "earlier_runs"}, *earlier["meta"].get("earlier_runs", [])]
    return {"meta": {**meta, "earlier_runs": runs}, "records": merged}


ARGUMENTS = [
    (("--model",), {"default": "tiny", "help": "a bundled model's key: tiny or tiny-flux (default: %(default)s)"}),
    (("--methods",), {"default": "all", "help": "comma list of methods, or 'all' (default: %(default)s)"}),
    (("--budgets",), {"default": DEFAULT_BUDGETS, "help": "comma list of compute budgets in (0, 1] "
                                                          "(default: %(default)s)"}),
    (("--seeds",), {"default": "100-119", "help": "evaluation seeds: a range 100-119 or a comma list "
                                                  "(default: %(default)s)"}),
    (("--steps",), {"default": "50", "help": "denoising steps, one or a comma list such as 10,20,30,50 "
                                           "(default: %(default)s)"}),
    (("--repeats",), {"type": int, "default": 3, "help": "timed pairs per operating point; 0 skips timing "
                                                         "(default: %(default)s)"}),
    (("--batch",), {"type": int, "default": 10, "help": "images per pipeline call (default: %(default)s)"}),
    (("--reused-call-cost",), {"default": "0", "help": "what LayerCache's plans charge for a fully reused call, "
                                                       "as a fraction of a computed one: 0 counts blocks only, "
                                                       "'measure' times it here first (default: %(default)s)"}),
    (("--out",), {"required": True, "help": "results JSON to write"}),
    (("--update",), {"action": "store_true", "help": "--out is an earlier run on the same images: replace only its "
                                                     "records of the methods and budgets run here, keep the rest"}),
    (("--html",), {"default": None, "help": "Plotly Pareto figure (HTML) to write"}),
    (("--png",), {"default": None, "help": "the same figure as PNG (needs kaleido and a Chromium)"}),
]


# ---------------------------------------------------------------- measuring

def _images(pipe, seeds, steps):
    from ..models.tiny.sets import eval_call

    return pipe(**eval_call(seeds), num_inference_steps=steps, output_type="pt").images.float().cpu()


def _timed(pipe, seed, steps) -> float:
    start = time.perf_counter()
    _images(pipe, [seed], steps)
    return time.perf_counter() - start


def measure(pipe, ctx, points, batches, repeats, progress) -> tuple[list, list]:
    """This process's share: per-image records and per-(point, process) timing/compute records."""
    from ..models.tiny.classifier import classify, load_classifier
    from .metrics import BlockCounter, lpips, psnr, ssim

    classifier = load_classifier()
    steps = ctx.num_steps
    reference, ref_macs = [], 0
    for batch in batches:
        with BlockCounter(pipe.transformer) as counter:
            reference.append(_images(pipe, batch, steps))
        ref_macs += counter.macs
    images, points_out = [], []
    labels = [[s % 10 for s in batch] for batch in batches]
    reference_hits = [(classify(classifier, ref) == _t(lab)).tolist() for ref, lab in zip(reference, labels)]
    for batch, lab, hits in zip(batches, labels, reference_hits):
        for seed, hit in zip(batch, hits):
            images.append({"method": "uncached", "budget": 1.0, "seed": seed, "psnr": PSNR_CAP, "ssim": 1.0,
                           "lpips": 0.0, "lpips_reason": None, "correct": bool(hit)})
    for point in points:
        macs = 0
        point.attach(pipe)
        try:
            for batch, ref, lab in zip(batches, reference, labels):
                with BlockCounter(pipe.transformer) as counter:
                    out = _images(pipe, batch, point.num_inference_steps)
                macs += counter.macs
                perceptual, reason = lpips(out, ref)
                perceptual = perceptual.tolist() if perceptual is not None else [None] * len(batch)
                for seed, p, s, lp, hit in zip(batch, psnr(out, ref).tolist(), ssim(out, ref).tolist(), perceptual,
                                               (classify(classifier, out) == _t(lab)).tolist()):
                    images.append({"method": point.method, "budget": point.budget, "seed": seed,
                                   "psnr": min(p, PSNR_CAP), "ssim": s, "lpips": lp, "lpips_reason": reason,
                                   "correct": bool(hit)})
        finally:
            point.detach(pipe)
        ratios = []
        if batches:
            for _ in range(repeats):   # alternate uncached and cached one-image calls
                t_ref = _timed(pipe, batches[0][0], steps)
                point.attach(pipe)
                try:
                    t_cached = _timed(pipe, batches[0][0], point.num_inference_steps)
                finally:
                    point.detach(pipe)
                ratios.append(t_ref / t_cached)
        points_out.append({"method": point.method, "budget": point.budget, "macs": macs, "ref_macs": ref_macs,
                           "ratios": ratios})
        progress()
    return images, points_out


def _t(values):
    import torch

    return torch.tensor(values)


def summarize(images: list, timings: list, points: list, steps: int) -> list[dict]:
    """One record per (method, budget) at one step count, from everyone's per-image and timing records."""
    from .metrics import LPIPS_UNAVAILABLE

    records = []
    keys = [("uncached", 1.0)] + [(p.method, p.budget) for p in points]
    for method, budget in keys:
        mine = [r for r in images if r["method"] == method and r["budget"] == budget]
        timed = [t for t in timings if t["method"] == method and t["budget"] == budget]
        ratios = [r for t in timed for r in t["ratios"]]
        ref_macs = sum(t["ref_macs"] for t in timed)
        point = next((p for p in points if (p.method, p.budget) == (method, budget)), None)
        record = {
            "method": method, "budget": budget, "steps": steps,
            "psnr": statistics.fmean(r["psnr"] for r in mine),
            "ssim": statistics.fmean(r["ssim"] for r in mine),
            "lpips": None, "lpips_reason": None,
            "fidelity": statistics.fmean(r["correct"] for r in mine),
            "compute_fraction": sum(t["macs"] for t in timed) / ref_macs if ref_macs else 1.0,
            "speedup_wall": statistics.median(ratios) if ratios else (1.0 if method == "uncached" else None),
            "speedup_ideal": None, "n": len(mine), "timing_repeats": len(ratios),
            "planned_fraction": point.planned_fraction if point else 1.0,
            "params": point.params if point else {},
            "per_image": sorted(({k: r[k] for k in ("seed", "psnr", "ssim", "correct")} for r in mine),
                                key=lambda r: r["seed"]),
        }
        perceptual = [r["lpips"] for r in mine]
        if method != "uncached" and None in perceptual:   # never a silent zero
            reasons = [r["lpips_reason"] for r in mine if r["lpips_reason"]]
            record["lpips_reason"] = reasons[0] if reasons else LPIPS_UNAVAILABLE
        elif mine:
            record["lpips"] = statistics.fmean(perceptual)
        record["speedup_ideal"] = 1 / record["compute_fraction"] if record["compute_fraction"] > 0 else None
        records.append(record)
    return records


# ---------------------------------------------------------------- figure

def pareto_figure(records: list):
    """One row per step count: PSNR against wall-clock speed-up (left) and against ideal speed-up = 1 / compute
    fraction (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    step_counts = sorted({r.get("steps", 0) for r in records})
    titles = [f"{title} — {steps} steps" for steps in step_counts
              for title in ("PSNR vs wall-clock speed-up (this machine)", "PSNR vs compute speed-up (1 / compute)")]
    fig = make_subplots(rows=len(step_counts), cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.3 / max(len(step_counts), 1), subplot_titles=titles)
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "uncached"))
    models, shown = _models(records), set()   # one line style per bundled model
    palette = ["#d62728", "#ff9896", "#e377c2", "#f7b6d2", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e",
               "#7f7f7f", "#8c564b", "#17becf", "#bcbd22"]
    for row, steps in enumerate(step_counts, start=1):
        for (index, method), (m, model) in itertools.product(enumerate(methods), enumerate(models)):
            rows = sorted((r for r in records if (r["method"], r.get("steps", 0), r.get("model", "tiny"))
                           == (method, steps, model)), key=lambda r: -r["budget"])
            if not rows:
                continue
            name = method if len(models) == 1 else f"{method} · {model}"
            style = dict(color=palette[index % len(palette)], width=3 if method == "layercache" else 1.5,
                         dash=("solid", "dot", "dash")[m % 3])
            hover = [f"{name}, {steps} steps<br>budget {r['budget']:g}, compute {r['compute_fraction']:.3f}<br>"
                     f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}<br>fidelity {r['fidelity']:.3f}" for r in rows]
            for col, key in ((1, "speedup_wall"), (2, "speedup_ideal")):
                fig.add_trace(go.Scatter(x=[r[key] for r in rows], y=[r["psnr"] for r in rows], mode="lines+markers",
                                         name=name, legendgroup=name, showlegend=col == 1 and name not in shown,
                                         line=style, hovertext=hover, hoverinfo="text"), row=row, col=col)
                shown.add(name)
    fig.update_xaxes(title_text="speed-up ×")
    fig.update_yaxes(title_text="PSNR vs uncached (dB)", col=1)
    fig.update_layout(width=1300, height=120 + 420 * len(step_counts), template="plotly_white",
                      title="LayerCache benchmark: quality vs speed")
    return fig


def write_figure(records, html=None, png=None):
    fig = pareto_figure(records)
    if html:
        fig.write_html(html, include_plotlyjs="cdn")
    if png:
        import os
        import shutil

        if shutil.which("chromium"):
            os.environ.setdefault("BROWSER_PATH", shutil.which("chromium"))
        try:
            fig.write_image(png, scale=1)
        except Exception as err:   # kaleido missing, or no browser for it
            raise ValueError(f"cannot write {png}: {type(err).__name__}: {str(err).splitlines()[0]} "
                             f"(pip install kaleido; it needs Chromium)") from None


# ---------------------------------------------------------------- the command

def run(args) -> list[dict]:
    settings = validate(args)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object
    from tqdm import tqdm

    from ..models.registry import load_pipeline, shipped_calibration
    from ..models.tiny.sets import calibration_calls, recheck_calls
    from .baselines import BenchContext, prepare
    from .overhead import reused_call_cost
    from .speed import machine

    # cpu=True: the bundled model runs on the CPU, and without it accelerate ignores a torchrun launch
    # (`accelerate launch --multi_gpu`) on a machine without CUDA instead of using gloo
    state = PartialState(cpu=True)
    main = state.is_main_process
    log = (lambda message: tqdm.write(message, file=sys.stderr)) if main else (lambda message: None)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    seeds = settings["seeds"]
    batches = [seeds[i:i + args.batch] for i in range(0, len(seeds), args.batch)]
    cells = [(n, m, b) for n in settings["steps"] for m in settings["methods"] for b in settings["budgets"]]
    bar = tqdm(total=2 * len(cells), desc="bench", file=sys.stderr, disable=not main, dynamic_ncols=True)
    records, skipped, notes, started = [], [], [], time.time()
    for steps in settings["steps"]:
        shipped = {g: shipped_calibration(args.model, steps, g) for g in (1, 4)}
        ctx = BenchContext(pipe, steps, calibration_calls(), {g: p for g, p in shipped.items() if p.is_file()},
                           log=log, recheck_calls=recheck_calls())
        if settings["reused_call_cost"] is None:   # timed once, on the main process: every process plans alike
            measured = [reused_call_cost(pipe, ctx.calibration(4)) if main else None]
            settings["reused_call_cost"] = broadcast_object_list(measured)[0]
            log(f"a fully reused call costs {settings['reused_call_cost']:g} of a computed one here")
        ctx.reused_call_cost = settings["reused_call_cost"]
        points = []
        for method, budget in ((m, b) for m in settings["methods"] for b in settings["budgets"]):
            bar.set_postfix_str(f"prepare {method} {budget:g} at {steps} steps")
            try:   # every process prepares the same points (deterministic)
                points.append(prepare(method, ctx, budget))
            except ValueError as err:   # e.g. a budget the method cannot reach: say so, measure the rest
                skipped.append({"method": method, "budget": budget, "steps": steps, "reason": str(err)})
                log(f"skipped {method} at budget {budget:g}, {steps} steps: {err}")
                bar.update()
            bar.update()
        with state.split_between_processes(batches) as mine:
            images, timings = measure(pipe, ctx, points, list(mine), args.repeats, bar.update)
        images, timings = gather_object(images), gather_object(timings)
        notes += [f"{steps} steps: {note}" for note in ctx.notes]
        if main:
            records += summarize(images, timings, points, steps)
    bar.close()
    # every process leaves the gloo group together: one that exits with the group alive can abort
    # ("terminate called without an active exception") while another still talks to it
    state.wait_for_everyone()
    state.destroy_process_group()
    if not main:
        return []
    command = (f"python -m layercache bench --model {args.model} --methods {','.join(settings['methods'])} "
               f"--budgets {','.join(f'{b:g}' for b in settings['budgets'])} --seeds {args.seeds} "
               f"--steps {','.join(map(str, settings['steps']))} "
               f"--repeats {args.repeats} --batch {args.batch} --reused-call-cost {settings['reused_call_cost']:g} "
               f"--out {args.out}" + (" --update" if settings["earlier"] is not None else "")
               + (f" --html {args.html}" if args.html else "") + (f" --png {args.png}" if args.png else ""))
    result = {"meta": {"command": command, "model": args.model, "steps": settings["steps"], "seeds": seeds,
                       "batch": args.batch, "repeats": args.repeats, "processes": state.num_processes,
                       "machine": machine(), "measure_seconds": round(time.time() - started, 1),
                       "psnr_cap_db": PSNR_CAP, "reused_call_cost": settings["reused_call_cost"], "notes": notes,
                       "skipped": skipped,
                       "speedup_wall": "uncached / cached time of one-image calls, alternated in one process, "
                                       "median over repeats (and processes)"},
              "records": records}
    if settings["earlier"] is not None:
        result = updated(settings["earlier"], result["meta"], records)
        records = result["records"]
    Path(args.out).write_text(json.dumps(result, indent=1, default=_json_default))
    if args.html or args.png:
        write_figure(records, args.html, args.png)
    print(table(records))
    print()
    print(grid([{"model": args.model, **r} for r in records]))
    return records


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def table(records: list) -> str:
    lines = [f"{'steps':>5s} {'method':20s} {'budget':>6s} {'compute':>7s} {'PSNR':>7s} {'SSIM':>7s} {'fid.':>5s} "
             f"{'wall×':>6s}"]
    for r in records:
        wall = f"{r['speedup_wall']:.2f}" if r["speedup_wall"] is not None else "-"
        lines.append(f"{r['steps']:5d} {r['method']:20s} {r['budget']:6.3f} {r['compute_fraction']:7.3f} "
                     f"{r['psnr']:7.2f} {r['ssim']:7.4f} {r['fidelity']:5.2f} {wall:>6s}")
    return "\n".join(lines)


def _models(records: list) -> list:
    return list(dict.fromkeys(r.get("model", "tiny") for r in records))


def _cells(records: list) -> list:
    """(steps, budget) of every cached cell, step counts ascending, budgets descending."""
    return sorted({(r["steps"], r["budget"]) for r in records if r["method"] != "uncached"},
                  key=lambda cell: (cell[0], -cell[1]))


def _standard_error(ours: dict, peer: dict) -> str:
    """' ± SE' of the mean of the paired per-image PSNR differences, where both records carry the same images."""
    a, b = ({r["seed"]: r["psnr"] for r in x.get("per_image", [])} for x in (ours, peer))
    differences = [a[seed] - b[seed] for seed in a if seed in b]
    if len(differences) < 2 or len(differences) != len(a):
        return ""
    return f" ± {statistics.stdev(differences) / math.sqrt(len(differences)):.2f}"


def grid(records: list, method: str = "layercache") -> str:
    """Markdown: per (steps, budget) cell and per model (a column group each), `method`'s PSNR, the best other
    method's (ablations of `method` are not its peers) and the margin ± the standard error of the mean paired
    per-image difference (where the records carry per-image figures); then each model's count of cells."""
    models = _models(records)
    lines = ["| steps | budget | " + " | ".join(f"{m}: LayerCache PSNR dB | best peer, its PSNR dB | margin ± SE dB"
                                                for m in models) + " |", "|---|---|" + "---|---|---|" * len(models)]
    margins = {m: [] for m in models}
    for steps, budget in _cells(records):
        row = []
        for model in models:
            cell = [r for r in records if (r["steps"], r["budget"], r.get("model", "tiny")) == (steps, budget, model)]
            ours = next((r for r in cell if r["method"] == method), None)
            peers = [r for r in cell if not r["method"].startswith(method) and r["method"] != "uncached"]
            if ours is None or not peers:
                row.append("– | – | –")
                continue
            peer = max(peers, key=lambda r: r["psnr"])
            margin = ours["psnr"] - peer["psnr"]
            margins[model].append(margin)
            bold = "**" if margin >= 0 else ""
            row.append(f"{bold}{ours['psnr']:.2f}{bold} | {peer['method']} {peer['psnr']:.2f} | {margin:+.2f}"
                       + _standard_error(ours, peer))
        lines.append(f"| {steps} | {budget:g} | " + " | ".join(row) + " |")
    lines.append("")
    for model, values in margins.items():
        ahead, level = sum(m > 0.005 for m in values), sum(abs(m) <= 0.005 for m in values)
        lines.append(f"{model}: LayerCache ahead in {ahead} of {len(values)} cells, level (within 0.005 dB) in "
                     f"{level}, behind in {len(values) - ahead - level}; summed margin {sum(values):+.2f} dB")
    return "\n".join(lines)


def speed_table(records: list) -> str:
    """Markdown: per (steps, budget) cell, every model's and method's wall-clock speed-up (of its ideal)."""
    models = _models(records)
    columns = [(model, method) for model in models for method in dict.fromkeys(
        r["method"] for r in records if r["method"] != "uncached" and r.get("model", "tiny") == model)]
    lines = ["| steps | budget | " + " | ".join(f"{model} {method} wall× (of ideal)" for model, method in columns)
             + " |", "|---|---|" + "---|" * len(columns)]
    for steps, budget in _cells(records):
        cells = []
        for model, method in columns:
            r = next((r for r in records if (r.get("model", "tiny"), r["method"], r["steps"], r["budget"])
                      == (model, method, steps, budget)), None)
            ok = r is not None and r["speedup_wall"] and r["speedup_ideal"]
            cells.append(f"{r['speedup_wall']:.2f} ({r['speedup_wall'] / r['speedup_ideal']:.2f})" if ok else "–")
        lines.append(f"| {steps} | {budget:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(paths, html=None, png=None) -> str:
    """The grid and the speed table of several results files (any mix of step counts and bundled models)."""
    records = []
    for path in paths:
        try:
            found = json.loads(Path(path).read_text())
            model = found.get("meta", {}).get("model", "tiny")
            records += [{"model": model, **r} for r in found["records"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a bench results file ({type(err).__name__})") from None
    if html or png:
        write_figure(records, html, png)
    return grid(records) + "\n\n" + speed_table(records)
