"""A session's run history for the app: one row per finished run, a live Pareto chart of PSNR against speed-up
with the shipped benchmark's curves for the same model and step count drawn faintly behind, and CSV / JSON
exports. Pure functions of plain data; the app keeps the rows in a per-session `gr.State`.
"""

import csv
import io
import json
import math
from pathlib import Path

import plotly.graph_objects as go

from ..models.registry import ASSETS

COLUMNS = ("model", "method", "steps", "budget", "groups", "max_k", "psnr_db", "ssim", "lpips", "compute_speedup",
           "wall_speedup", "time_cached_s", "time_uncached_s")
# colour-blind-safe (Okabe-Ito), one per method in the order the app lists them
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")


def add_run(rows: list, metrics: dict, settings: dict) -> list:
    """`rows` plus this finished run (a new list: Gradio state is replaced, not mutated). A run that was stopped
    leaves the metrics of the run before it: the same metrics again add nothing."""
    if not isinstance(metrics, dict) or metrics.get("psnr_db") is None:
        return rows
    row = {**{key: settings.get(key) for key in ("model", "steps", "budget", "groups", "max_k")},
           **{key: metrics.get(key) for key in COLUMNS if key in metrics}}
    row["method"] = metrics.get("method", settings.get("method"))
    measured = [key for key in COLUMNS if key in metrics] + ["method"]
    if rows and all(rows[-1].get(key) == row.get(key) for key in measured):
        return rows
    return [*rows, {key: row.get(key) for key in COLUMNS}]


def table(rows: list) -> list:
    """Rows as lists in COLUMNS order, for a gr.Dataframe."""
    return [[row.get(key) for key in COLUMNS] for row in rows]


def to_csv(rows: list) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_exports(rows: list, folder: Path) -> list:
    """history.csv and history.json in `folder` (one per session), for the download buttons."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.csv").write_text(to_csv(rows))
    (folder / "history.json").write_text(json.dumps(rows, indent=1))
    return [str(folder / "history.csv"), str(folder / "history.json")]


def benchmark_records(model: str, steps: int) -> list:
    """The shipped benchmark's records for this model and step count (bundled models only), or none."""
    path = ASSETS / (f"bench_grid_steps{int(steps)}.json" if model == "tiny" else
                     f"bench_grid_{model}_steps{int(steps)}.json")
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())["records"]
    except (ValueError, KeyError):
        return []
    return [r for r in records if r.get("method") != "uncached" and r.get("steps", steps) == steps]


def pareto(rows: list, background: list = (), methods: list = ()) -> go.Figure:
    """PSNR against compute speed-up: this session's runs as points coloured by method, the benchmark behind."""
    fig = go.Figure()
    colours = {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(methods)}
    for method in dict.fromkeys(r["method"] for r in background):
        points = sorted((r for r in background if r["method"] == method), key=lambda r: r["speedup_ideal"])
        fig.add_trace(go.Scatter(x=[r["speedup_ideal"] for r in points], y=[r["psnr"] for r in points],
                                 mode="lines", name=f"benchmark: {method}", opacity=0.35, legendgroup="benchmark",
                                 line=dict(width=1.5, dash="dot", color="#7f7f7f"),
                                 hovertemplate=f"benchmark {method}<br>%{{x:.2f}}×, %{{y:.1f}} dB<extra></extra>"))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = [r for r in rows if r["method"] == method and _finite(r.get("psnr_db"))]
        fig.add_trace(go.Scatter(
            x=[r["compute_speedup"] for r in points], y=[r["psnr_db"] for r in points], mode="markers",
            name=method, marker=dict(size=11, color=colours.get(method, PALETTE[-1]),
                                     line=dict(width=1, color="white")),
            customdata=[[r["steps"], r["budget"], r["groups"], r["wall_speedup"]] for r in points],
            hovertemplate=(f"{method}<br>%{{customdata[0]}} steps, budget %{{customdata[1]}}, %{{customdata[2]}} groups"
                           "<br>compute %{x:.2f}×, wall %{customdata[3]}×<br>PSNR %{y:.2f} dB<extra></extra>")))
    fig.update_layout(title="Your runs: quality against speed (benchmark dotted behind)", height=320,
                      margin=dict(l=60, r=10, t=40, b=40), xaxis_title="compute speed-up ×",
                      yaxis_title="PSNR vs uncached (dB)", uirevision="history", legend=dict(font=dict(size=10)))
    return fig


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
