"""Plotly figures and display images for the app: per-step heatmaps (steps x groups), the explore view's
stability plot, and an amplified difference image. Pure functions of plain data (runner events,
calibrations, numpy images).

Every figure keeps one constant `layout.uirevision`, so a user's zoom survives the per-step updates.
"""

import functools

import numpy as np
import plotly.graph_objects as go

UIREVISION = "layercache"
DIFFERENCE_GAIN = 10.0   # the difference image's amplification: white = off by 1 / gain of the range or more
_LAYOUT = dict(uirevision=UIREVISION, height=260, margin=dict(l=60, r=10, t=40, b=40),
               xaxis_title="step", yaxis_title="group (0 = shallow)")

HEATMAPS = {  # key: (title, colour scale, colour range, hover label)
    "velocity": ("Velocity change per group", "Viridis", None, "change"),
    # Okabe-Ito orange / blue: told apart with every common colour-vision deficiency
    "computed": ("Computed (1) / reused (0)", [[0, "#E69F00"], [1, "#0072B2"]], (0, 1), "computed"),
    "k": ("Chosen K (reused cells)", "Blues", (0, 4), "K"),
}


def heatmap(key: str, grid: np.ndarray, max_k: int | None = None) -> go.Figure:
    """grid: (steps, groups), NaN where not known yet. Drawn with steps on x and groups on y."""
    steps, groups = grid.shape
    template = _heatmap_template(key, steps, groups, max_k if key == "k" else None)
    z = np.where(np.isfinite(grid), grid, None).T.tolist()  # None: JSON null, an empty cell
    # built from a validated template without re-validating: 4x faster, and this runs every step
    return go.Figure({"data": [dict(template["data"][0], z=z)], "layout": template["layout"]}, _validate=False)


@functools.lru_cache(maxsize=64)
def _heatmap_template(key: str, steps: int, groups: int, max_k: int | None) -> dict:
    title, scale, zrange, label = HEATMAPS[key]
    if max_k:
        zrange = (0, max_k)
    trace = go.Heatmap(z=[[None] * steps] * groups, x=list(range(steps)), y=list(range(groups)), colorscale=scale,
                       xgap=1, ygap=1, zmin=None if zrange is None else zrange[0],
                       zmax=None if zrange is None else zrange[1], hoverongaps=False,
                       hovertemplate=f"step %{{x}}, group %{{y}}<br>{label} %{{z:.3g}}<extra></extra>")
    fig = go.Figure(trace)
    fig.update_layout(title=title, **_LAYOUT)
    fig.update_xaxes(range=[-0.5, steps - 0.5])
    fig.update_yaxes(range=[-0.5, groups - 0.5], dtick=1)
    return fig.to_plotly_json()


def empty_grids(num_steps: int, num_groups: int) -> dict:
    return {key: np.full((num_steps, num_groups), np.nan) for key in HEATMAPS}


def record_step(grids: dict, event: dict) -> None:
    """Fill row `event["step"]` of each grid from a runner step event."""
    for g, group in enumerate(event["groups"]):
        row = event["step"]
        grids["computed"][row, g] = group["computed"]
        grids["velocity"][row, g] = np.nan if group["velocity_change"] is None else group["velocity_change"]
        grids["k"][row, g] = np.nan if group["k"] is None or group["computed"] else group["k"]


def heatmaps(grids: dict, max_k: int | None = None) -> tuple:
    return tuple(heatmap(key, grids[key], max_k) for key in HEATMAPS)


def velocity_figure(velocity_change: np.ndarray) -> go.Figure:
    """Explore view: (steps, groups) velocity change of the uncached run."""
    grid = np.asarray(velocity_change, dtype=float)
    fig = heatmap("velocity", grid)
    finite = grid[np.isfinite(grid)]
    if finite.size:   # the first steps change several times more than the rest: cap the scale so the rest shows
        fig.update_traces(zmin=float(finite.min()), zmax=float(np.percentile(finite, 95)))
    fig.update_layout(title="Per-group velocity change of the uncached run (colour capped at the 95th percentile)")
    return fig


def stability_figure(calibration=None) -> go.Figure:
    """Mean one-step prediction error against K, one line per group and predictor (lower = more stable)."""
    fig = go.Figure()
    if calibration is not None:
        table = calibration.stability()  # (groups, candidates)
        for kind, dash in (("slope", "solid"), ("mean", "dot")):
            columns = [(c, k) for c, (p, k) in enumerate(calibration.candidates) if p == kind]
            for g in range(table.shape[0]):
                fig.add_trace(go.Scatter(
                    x=[k for _, k in columns], y=[float(table[g, c]) for c, _ in columns], mode="lines+markers",
                    name=f"group {g}, {kind}", line=dict(dash=dash), legendgroup=f"g{g}",
                    hovertemplate=f"group {g}, {kind}, K=%{{x}}<br>error %{{y:.3g}}<extra></extra>"))
    fig.update_layout(title="Stability: one-step prediction error vs K (lower is more stable)",
                      **{**_LAYOUT, "height": 320, "xaxis_title": "K (span of the slope)",
                         "yaxis_title": "relative L1 error"})
    fig.update_yaxes(type="log")
    fig.update_xaxes(dtick=1)
    return fig


def to_display(image: np.ndarray | None, size: int = 256) -> np.ndarray | None:
    """[0, 1] image (H, W) or (H, W, 3) -> uint8, enlarged by an integer factor with nearest neighbours
    (pixels stay sharp squares; a 32 x 32 digit becomes 256 x 256)."""
    if image is None:
        return None
    factor = max(1, size // max(image.shape[:2]))
    pixels = np.clip(np.round(np.asarray(image, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def difference_image(a: np.ndarray, b: np.ndarray, gain: float = DIFFERENCE_GAIN) -> np.ndarray:
    """|a - b| x gain, clipped to [0, 1]: where the cached image departs from the uncached one."""
    return np.clip(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)) * gain, 0, 1)


# the end-of-run figures, each with what it means (the app's "metrics" panel)
READOUT = (
    ("psnr_db", "PSNR", " dB", "pixel closeness of the cached image to the uncached one (higher is closer; above "
     "about 40 dB the two look the same)"),
    ("ssim", "SSIM", "", "structural similarity: 1 = identical structure, below about 0.9 shapes visibly differ"),
    ("lpips", "LPIPS", "", "perceptual distance of a trained network: 0 = identical, above about 0.1 visible"),
    ("compute_speedup", "Compute speed-up", "×", "blocks run uncached ÷ blocks run cached: the speed-up a cache "
     "with no overhead would give"),
    ("wall_speedup", "Wall speed-up", "×", "uncached lane's time ÷ cached lane's time, measured on this machine "
     "(includes the cache's own overhead)"),
    ("time_cached_s", "Cached lane", " s", "time of the cached lane"),
    ("time_uncached_s", "Uncached lane", " s", "time of the uncached lane"),
)


def readout(metrics: dict | None) -> str:
    """Markdown: the end metrics as labelled figures with a one-line meaning each."""
    if not metrics:
        return "**Results** appear here when a run ends."
    lines = [f"**Results — {metrics.get('method', '')}**", "", "| | | what it means |", "|---|---|---|"]
    for key, name, unit, meaning in READOUT:
        value = metrics.get(key)
        shown = f"**{value}{unit}**" if value is not None else "—"
        if key == "lpips" and value is None:
            meaning = metrics.get("lpips_note") or meaning
        lines.append(f"| {name} | {shown} | {meaning} |")
    return "\n".join(lines)
