"""Paint your own schedule: the app's editable computed/reused map. Pure functions of a `Schedule`'s JSON
(the app keeps it in a per-session `gr.State`), so every edit is checked here and a bad one changes nothing.

The map is drawn as a table with one row per group and one column per step, like the heatmaps: "run" where the
group is computed, else its predictor and span ("K2" = the slope over the last 2 computed steps, "K1" = plain
reuse, "mean3", "quad3", "tay3"). A click toggles a cell, or the whole step, between computed and reused.
"""

import json
from pathlib import Path

import pandas as pd

from ..predictors import MIN_K, PREDICTORS
from ..schedule import Cell, Schedule

COMPUTED, REUSED = "#0072B2", "#E69F00"   # Okabe-Ito blue / orange: the heatmaps' colours, colour-blind-safe
SHORT = {"slope": "K", "mean": "mean", "quadratic": "quad", "taylor": "tay"}


def label(cell: Cell) -> str:
    return "run" if cell.compute else f"{SHORT[cell.predictor]}{cell.k}"


def table(schedule_json: dict | None):
    """A pandas Styler for gr.Dataframe: groups as rows, steps as columns, coloured like the heatmap."""
    if not schedule_json:
        return pd.DataFrame({"group": ["(no schedule yet: run LayerCache or press “Start from the planner”)"]})
    schedule = Schedule.from_json(schedule_json)
    ends = schedule.group_starts[1:] + [schedule.num_blocks]
    # "v" marks a velocity step: the whole transformer skipped, its output predicted
    marks = ["v " if s in schedule.velocity_steps else "" for s in range(schedule.num_steps)]
    rows = [[f"{g} (blocks {a}–{b - 1})"] + [marks[s] + label(schedule.cells[s][g]) for s in range(schedule.num_steps)]
            for g, (a, b) in enumerate(zip(schedule.group_starts, ends))]
    frame = pd.DataFrame(rows, columns=["group"] + [str(s) for s in range(schedule.num_steps)])
    return frame.style.map(lambda v: f"background-color: {COMPUTED if v == 'run' else REUSED}; color: white",
                           subset=frame.columns[1:])


def summary(schedule_json: dict | None) -> str:
    if not schedule_json:
        return "No schedule yet."
    schedule = Schedule.from_json(schedule_json)
    reused = sum(not c.compute for row in schedule.cells for c in row)
    fraction = schedule.compute_fraction
    return (f"This schedule runs **{fraction:.0%}** of the block compute (ideal speed-up **{1 / fraction:.2f}×**); "
            f"{reused} of {schedule.num_steps * schedule.num_groups} cells reused"
            + (f"; {len(schedule.velocity_steps)} velocity steps (v: the transformer skipped, its output predicted)"
               if schedule.velocity_steps else "")
            + ("; reused groups predict their outputs (TaylorSeer's form), not their residuals"
               if schedule.reuse == "outputs" else "") + ". Made by: "
            f"{schedule.meta.get('method', 'unknown')}.")


def toggle(schedule_json: dict, step: int, group: int, whole_step: bool, predictor: str, k: int) -> dict:
    """The schedule with cell (step, group), or every group at `step`, flipped: computed -> reused with
    (predictor, k), reused -> computed. Raises ValueError (and changes nothing) where the edit is not allowed."""
    if not schedule_json:
        raise ValueError("there is no schedule to edit yet: run LayerCache or press “Start from the planner”")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
    if not 1 <= int(k) <= 16 or int(k) < MIN_K[predictor]:
        raise ValueError(f"the {predictor} predictor needs K ≥ {MIN_K[predictor]} (K = {k} given): raise K or "
                         f"pick another predictor")
    schedule = Schedule.from_json(schedule_json)
    if not 0 <= step < schedule.num_steps or not 0 <= group < schedule.num_groups:
        raise ValueError(f"click a cell of the map (steps 0–{schedule.num_steps - 1}, groups "
                         f"0–{schedule.num_groups - 1})")
    if step == 0:
        raise ValueError("step 0 computes every group: there is nothing to reuse yet")
    groups = range(schedule.num_groups) if whole_step else [group]
    reuse = schedule.cells[step][group].compute   # what the clicked cell becomes decides for the whole step
    row = list(schedule.cells[step])
    for g in groups:
        row[g] = Cell(False, predictor, int(k)) if reuse else Cell(True)
    schedule.cells[step] = row
    schedule.velocity_steps = [s for s in schedule.velocity_steps if s != step]   # a painted step runs the transformer
    schedule.meta = {"method": "painted in the app", "from": schedule.meta.get("method", "unknown")}
    return schedule.to_json()


def compute_all(schedule_json: dict) -> dict:
    """Every cell computed (the uncached run), to paint reuse onto."""
    if not schedule_json:
        raise ValueError("there is no schedule to edit yet: run LayerCache or press “Start from the planner”")
    schedule = Schedule.from_json(schedule_json)
    schedule.cells = [[Cell(True)] * schedule.num_groups for _ in range(schedule.num_steps)]
    schedule.velocity_steps = []
    schedule.reuse = "residuals"   # painted cells reuse residuals, what the map's legend describes
    schedule.meta = {"method": "painted in the app", "from": "all computed"}
    return schedule.to_json()


def check_fits(schedule_json: dict, model_id: str, num_blocks: int, num_steps: int, num_groups: int) -> Schedule:
    """The schedule, if it was made for this model, step count and number of groups; else a ValueError that
    says which setting to change."""
    schedule = Schedule.from_json(schedule_json)
    schedule.check_fits(model_id, num_blocks, num_steps)
    if schedule.num_groups != num_groups:
        raise ValueError(f"schedule has {schedule.num_groups} groups, the app is set to {num_groups}; set Groups to "
                         f"{schedule.num_groups} or start a new schedule")
    return schedule


def load_upload(path) -> dict:
    """An uploaded schedule file, validated (size, JSON, format; `Schedule.load`), as JSON."""
    if path is None:
        raise ValueError("no file was uploaded")
    return Schedule.load(Path(path)).to_json()


def write(schedule_json: dict, folder: Path) -> str:
    """schedule.json in `folder` (one per session), for the download."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "schedule.json"
    path.write_text(json.dumps(schedule_json, indent=1))
    return str(path)
