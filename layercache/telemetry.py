"""Per-step, per-group records of a cached run: the "step event" stream the app, CLI and benchmark read.

Velocity changes are kept as 0-d tensors until read, so recording never forces a GPU sync.
"""

from dataclasses import dataclass, field


@dataclass
class GroupRecord:
    computed: bool = True
    predictor: str | None = None
    k: int | None = None
    time_s: float = 0.0
    _changes: list = field(default_factory=list)  # one 0-d tensor per CFG branch where computed

    def add_change(self, change) -> None:
        """Record one CFG branch's relative change of the group's residual (a 0-d tensor, read only when asked)."""
        self._changes.append(change)

    @property
    def velocity_change(self) -> float | None:
        """Relative L1 change of the group's residual since the previous step (mean over CFG branches)."""
        values = [float(c) for c in self._changes]
        return sum(values) / len(values) if values else None


@dataclass
class StepRecord:
    step: int
    sigma: float
    groups: list
    contexts: set = field(default_factory=set)

    def as_event(self) -> dict:
        """Plain data: the step event of studio/runner.py's module docstring."""
        return {"step": self.step, "sigma": self.sigma,
                "groups": [{"computed": g.computed, "predictor": g.predictor, "k": g.k,
                            "velocity_change": g.velocity_change, "time_s": g.time_s} for g in self.groups]}


class Telemetry:
    """Records of the current (or last) generation; a new generation starts a new list."""

    def __init__(self, num_groups: int, enabled: bool = True):
        self.num_groups = num_groups
        self.enabled = enabled
        self.steps: list[StepRecord] = []

    def begin_call(self, context: str, step: int, sigma: float, row) -> None:
        last = self.steps[-1] if self.steps else None
        if last is None or step < last.step or (step == last.step and context in last.contexts):
            self.steps = []  # a new generation
        if not self.steps or self.steps[-1].step != step:
            groups = [GroupRecord(cell.compute, None if cell.compute else cell.predictor,
                                  None if cell.compute else cell.k) for cell in row]
            self.steps.append(StepRecord(step, sigma, groups))
        self.steps[-1].contexts.add(context)

    def group(self, group: int) -> GroupRecord:
        return self.steps[-1].groups[group]

    def events(self) -> list[dict]:
        return [record.as_event() for record in self.steps]

    def computed_cells(self) -> int:
        return sum(g.computed for record in self.steps for g in record.groups)
