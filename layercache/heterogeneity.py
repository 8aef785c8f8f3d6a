"""How differently a model's layer groups behave, read off a calibration (docs/design.md, "Heterogeneity").

Per group and per phase of the run (early / middle / late thirds of the steps after the first): the mean relative
velocity change of its residual, and the one-step-horizon relative L2 error of plain reuse (`slope:1`) and of the
best slope (K >= 2). One summary figure: the ratio of the least stable group's plain-reuse error to the most
stable one's over the whole run (1: all groups alike; the paper's premise is that it is well above 1).
"""

import warnings
from dataclasses import dataclass

import numpy as np

PHASES = ("all", "early", "middle", "late")
ALIKE = 1.5   # below this ratio the sentence says the groups behave alike (a judgement, stated where it is used)


@dataclass
class Heterogeneity:
    groups: list                 # [(first block, last block)]
    velocity_change: np.ndarray  # (phases, G)
    plain_error: np.ndarray      # (phases, G)
    slope_error: np.ndarray      # (phases, G) best slope with K >= 2; NaN where the calibration has none
    ratio: float                 # least / most stable group's plain-reuse error over the whole run

    def ranks(self) -> list:
        """Groups from the most to the least stable (whole-run plain-reuse error)."""
        return [int(g) for g in np.argsort(self.plain_error[0], kind="stable")]

    def table(self) -> str:
        """A markdown table: one row per group, most stable first, the whole run and the three phases."""
        head = ("| group | blocks | stability rank | " + " | ".join(
            f"{what} ({phase})" for what in ("velocity change", "plain error") for phase in PHASES)
            + " | best-slope error (all) |")
        rows = [head, "|" + "---|" * (4 + 2 * len(PHASES))]
        for rank, g in enumerate(self.ranks(), start=1):
            first, last = self.groups[g]
            cells = [f"{self.velocity_change[p, g]:.3f}" for p in range(len(PHASES))]
            cells += [f"{self.plain_error[p, g]:.3f}" for p in range(len(PHASES))] + [f"{self.slope_error[0, g]:.3f}"]
            rows.append(f"| {g} | {first}–{last} | {rank} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def sentence(self) -> str:
        """What this model shows, in one computed sentence."""
        order = self.ranks()
        stable, unstable = order[0], order[-1]
        name = {g: f"group {g} (blocks {a}–{b})" for g, (a, b) in enumerate(self.groups)}
        if len(order) > 1 and self.ratio >= ALIKE:
            return (f"{name[stable].capitalize()} is {self.ratio:.1f}× more stable than {name[unstable]}: plain reuse "
                    f"errs {self.plain_error[0, stable]:.3f} there against {self.plain_error[0, unstable]:.3f}.")
        early, middle = np.nanmean(self.velocity_change[1]), np.nanmean(self.velocity_change[2])
        return (f"The groups behave alike (ratio {self.ratio:.2f}, below {ALIKE}): this model shows no layer-wise "
                f"structure to exploit. What varies is the step: early steps change {early / middle:.1f}× as much "
                f"as middle ones.")

    def summary(self) -> str:
        stable, unstable = self.ranks()[0], self.ranks()[-1]
        return (f"{self.sentence()} Heterogeneity ratio {self.ratio:.2f} (plain-reuse error of the least stable "
                f"group, {unstable}, over the most stable, {stable}; 1 = all groups alike).")


def phases(num_steps: int) -> list:
    """Step indices of each phase: the whole run and its thirds, step 0 left out (nothing to compare it with)."""
    steps = np.arange(1, num_steps)
    return [steps, *np.array_split(steps, 3)]


def heterogeneity(cal) -> Heterogeneity:
    """The measure for a Calibration (any grouping; one group gives a ratio of 1)."""
    one_step = np.where(np.isfinite(cal.errors[:, :, 1, :]), cal.errors[:, :, 1, :], np.nan)   # (N, G, C)
    plain = [c for c, cand in enumerate(cal.candidates) if tuple(cand) == ("slope", 1)]
    slopes = [c for c, (kind, k) in enumerate(cal.candidates) if kind == "slope" and k >= 2]
    if not plain:
        raise ValueError("the calibration has no plain-reuse candidate (slope, 1): calibrate with K values from 1")
    change, plain_error, slope_error = [], [], []
    with warnings.catch_warnings():   # the mean of an all-NaN slice (a phase with no steps) is NaN, as it says
        warnings.simplefilter("ignore", RuntimeWarning)
        for steps in phases(cal.num_steps):
            change.append(np.nanmean(cal.velocity_change[steps], axis=0))
            plain_error.append(np.nanmean(one_step[steps][:, :, plain[0]], axis=0))
            best = np.nanmin(one_step[steps][:, :, slopes], axis=2) if slopes else \
                np.full((len(steps), cal.num_groups), np.nan)
            slope_error.append(np.nanmean(best, axis=0))
    plain_error = np.array(plain_error)
    whole = plain_error[0]
    ratio = float(np.nanmax(whole) / np.nanmin(whole)) if np.nanmin(whole) > 0 else float("inf")
    ends = list(cal.group_starts) + [cal.num_blocks]
    groups = [(ends[g], ends[g + 1] - 1) for g in range(cal.num_groups)]
    return Heterogeneity(groups, np.array(change), plain_error, np.array(slope_error), ratio)
