"""A Schedule says, for every (step, group), compute the group or reuse it with a predictor and span K.

A step whose groups are all reused can also be a *velocity step*: the transformer is not called at all and its
output (the velocity) is predicted from the log of its outputs with the row's predictor and K, as MeanCache
does (docs/design.md, "Velocity steps"). It skips the embeddings and the final layer too.

`reuse` says what a reused group predicts: its residual, added to the input it gets on that step ("residuals", the
default: the fresh embedding flows through), or its output, the input ignored ("outputs": TaylorSeer's form, which
predicts every block's output; on a fully reused step it is one prediction of the stack's output).

Schedules are JSON files with a format version; loading validates everything and says what is wrong.
The greedy allocator that builds them from a calibration lives in `planner.py`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .predictors import PREDICTORS

FORMAT = "layercache.schedule"
VERSION = 3   # 2: velocity steps; 3: reuse (older files, which have neither, still load)
REUSE = ("residuals", "outputs")
MAX_K = 16
MAX_FILE_BYTES = 2_000_000


@dataclass(frozen=True)
class Cell:
    compute: bool
    predictor: str = "slope"
    k: int = 1

    def encode(self) -> str:
        return "compute" if self.compute else f"{self.predictor}:{self.k}"

    @staticmethod
    def decode(text) -> "Cell":
        if text == "compute":
            return Cell(True)
        if isinstance(text, str) and text.count(":") == 1:
            kind, k = text.split(":")
            if kind in PREDICTORS and k.isdigit() and 1 <= int(k) <= MAX_K:
                return Cell(False, kind, int(k))
        raise ValueError(f"cell {text!r} is neither 'compute' nor '<predictor>:<K>' with predictor in "
                         f"{PREDICTORS} and K from 1 to {MAX_K}")


@dataclass
class Schedule:
    model_id: str
    sigmas: list          # sigma at each step, as the pipeline's scheduler produced it
    group_starts: list    # first block of each group
    num_blocks: int
    group_costs: list     # fraction of block compute per group
    cells: list           # [step][group] -> Cell
    meta: dict = field(default_factory=dict)
    velocity_steps: list = field(default_factory=list)   # fully reused steps predicted at the transformer's output
    reuse: str = "residuals"   # what a reused group predicts: its residual or its output (REUSE)

    def __post_init__(self):
        if self.reuse not in REUSE:
            raise ValueError(f"schedule reuse must be one of {REUSE}, got {self.reuse!r}")
        self.velocity_steps = sorted(set(self.velocity_steps))
        for step in self.velocity_steps:
            if not isinstance(step, int) or not 1 <= step < len(self.cells) \
                    or any(cell.compute for cell in self.cells[step]):
                raise ValueError(f"velocity step {step!r} must be a step from 1 to {len(self.cells) - 1} on which "
                                 f"every group is reused")
            if len({cell.encode() for cell in self.cells[step]}) != 1:
                raise ValueError(f"on velocity step {step} every group must name the same predictor and K, got "
                                 f"{[cell.encode() for cell in self.cells[step]]}")

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    @property
    def num_groups(self) -> int:
        return len(self.group_starts)

    @property
    def compute_fraction(self) -> float:
        done = sum(c for row in self.cells for c, cell in zip(self.group_costs, row) if cell.compute)
        return done / self.num_steps

    @property
    def max_k(self) -> int:
        return max([cell.k for row in self.cells for cell in row if not cell.compute], default=1)

    def actions(self) -> str:
        """What the hooks do, and only that (cells, velocity steps, reuse): equal for plans that run identically."""
        return str(([[c.encode() for c in row] for row in self.cells], self.velocity_steps, self.reuse))

    @classmethod
    def all_compute(cls, model_id, sigmas, layout) -> "Schedule":
        cells = [[Cell(True)] * layout.num_groups for _ in sigmas]
        return cls(model_id, list(sigmas), list(layout.starts), layout.num_blocks, list(layout.costs), cells,
                   {"method": "all-compute"})

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model_id": self.model_id, "num_steps": self.num_steps,
                "sigmas": self.sigmas, "num_blocks": self.num_blocks, "group_starts": self.group_starts,
                "group_costs": self.group_costs, "cells": [[c.encode() for c in row] for row in self.cells],
                "velocity_steps": self.velocity_steps, "reuse": self.reuse, "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict) -> "Schedule":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a LayerCache schedule: expected \"format\": \"{FORMAT}\"")
        if data.get("version") not in (1, 2, VERSION):
            raise ValueError(f"schedule format version {data.get('version')!r} is not supported (expected 1 to "
                             f"{VERSION})")
        missing = [k for k in ("model_id", "num_steps", "sigmas", "num_blocks", "group_starts", "group_costs",
                               "cells") if k not in data]
        if missing:
            raise ValueError(f"schedule is missing the field(s) {', '.join(missing)}")
        steps, blocks, starts = data["num_steps"], data["num_blocks"], data["group_starts"]
        if not isinstance(steps, int) or steps < 1 or not isinstance(blocks, int) or blocks < 1:
            raise ValueError("schedule num_steps and num_blocks must be positive integers")
        if not isinstance(starts, list) or not starts or starts[0] != 0 \
                or any(not isinstance(s, int) for s in starts) \
                or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= blocks:
            raise ValueError(f"schedule group_starts {starts!r} must begin at 0 and increase below num_blocks={blocks}")
        sigmas, costs, rows = data["sigmas"], data["group_costs"], data["cells"]
        if not isinstance(sigmas, list) or len(sigmas) != steps or not all(isinstance(s, (int, float)) for s in sigmas):
            raise ValueError(f"schedule sigmas must be a list of {steps} numbers")
        if not isinstance(costs, list) or len(costs) != len(starts) or not all(isinstance(c, (int, float)) and c > 0
                                                                                for c in costs):
            raise ValueError(f"schedule group_costs must be {len(starts)} positive numbers")
        if not isinstance(rows, list) or len(rows) != steps or any(not isinstance(r, list) or len(r) != len(starts)
                                                                   for r in rows):
            raise ValueError(f"schedule cells must be {steps} rows of {len(starts)} cells (one per step and group)")
        cells = [[Cell.decode(c) for c in row] for row in rows]
        if not all(cell.compute for cell in cells[0]):
            raise ValueError("schedule must compute every group at step 0: there is nothing to reuse yet")
        velocity = data.get("velocity_steps", [])
        if not isinstance(velocity, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in velocity):
            raise ValueError("schedule velocity_steps must be a list of step numbers")
        return cls(data["model_id"], [float(s) for s in sigmas], list(starts), blocks, [float(c) for c in costs],
                   cells, dict(data.get("meta", {})), velocity, data.get("reuse", "residuals"))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path) -> "Schedule":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"schedule file {path} not found")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"schedule file {path} is larger than {MAX_FILE_BYTES} bytes")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"schedule file {path} is not valid JSON ({err})") from None
        return cls.from_json(data)

    def check_fits(self, model_id: str, num_blocks: int, num_steps: int | None = None) -> None:
        """Raises ValueError naming what does not match."""
        if self.model_id != model_id:
            raise ValueError(f"schedule was made for model {self.model_id}, this model is {model_id}")
        if self.num_blocks != num_blocks:
            raise ValueError(f"schedule expects {self.num_blocks} blocks, this model has {num_blocks}")
        if num_steps is not None and self.num_steps != num_steps:
            raise ValueError(f"schedule is for {self.num_steps} steps, the run asks for {num_steps}; "
                             f"plan a schedule for {num_steps} steps")
