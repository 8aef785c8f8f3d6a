"""Greedy 3-D budget allocation over (step, group, K) (DESIGN.md §2).

Start with every cell computed; repeatedly reuse the cell with the highest saving per error,
cost_g / (w_g * eps^gamma + delta), where eps is the error of its best candidate at its current horizon
(how many steps since the group was last computed). Reusing a cell lengthens the horizon of the reused
cells after it, so keys are recomputed lazily when popped. A cell is rejected if it makes a group's run
of consecutive reuses longer than `max_reuse`, or a step's summed error exceed `step_error_cap`.
Stops when the executed fraction of block compute reaches the budget.

`synchronized=True` allocates whole steps instead: all groups are reused on the same steps, each group
with its own best candidate, and the round(N·budget) computed steps are those that minimize the summed
error^gamma of all reused cells (a shortest path, exact for the table). At low budgets this wins: a group
computed on inputs that predicted groups upstream made makes errors the teacher-forced table cannot see.
`plan_verified` tries both.
"""

import heapq
import math

import numpy as np

from .calibrate import Calibration
from .schedule import Cell, Schedule


def check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget is the fraction of block compute to execute and must be in (0, 1], got {budget!r}")
    return float(budget)


def steps_for(budget: float, num_steps: int) -> int:
    """round(N·b), halves rounded up (toward more compute for the method), at least 1."""
    return min(num_steps, max(1, math.floor(num_steps * budget + 0.5)))


def shortest_schedule(cost: np.ndarray, budget_steps: int) -> list[int]:
    """The computed steps (exactly `budget_steps`, step 0 among them) minimizing the summed edge cost of
    consecutive computed steps (and of the last one to the end, column N). Dynamic programming, O(B·N²).
    Shared by synchronized plans and MeanCache."""
    n = cost.shape[0]
    if not 1 <= budget_steps <= n:
        raise ValueError(f"a schedule needs from 1 to {n} computed steps, got {budget_steps}")
    best = np.full((budget_steps + 1, n), np.inf)   # best[j, c]: j computed steps, the last one at c
    parent = np.zeros((budget_steps + 1, n), dtype=int)
    best[1, 0] = 0.0
    for j in range(2, budget_steps + 1):
        for c in range(j - 1, n):
            totals = best[j - 1, :c] + cost[:c, c]
            a = int(np.argmin(totals))
            best[j, c], parent[j, c] = totals[a], a
    finals = best[budget_steps] + cost[:, n]
    last = int(np.argmin(finals))
    if not np.isfinite(finals[last]):
        raise ValueError(f"no schedule with {budget_steps} computed steps has a finite cost")
    steps = [last]
    for j in range(budget_steps, 1, -1):
        steps.append(int(parent[j, steps[-1]]))
    return steps[::-1]


def plan(calibration: Calibration, budget: float, protect_first: int = 2, protect_last: int = 1,
         max_reuse: int = 4, max_k: int | None = None, predictors=None, step_error_cap: float | None = None,
         gamma: float = 2.0, delta: float = 1e-6, group_weights=None, synchronized: bool = False) -> Schedule:
    budget = check_budget(budget)
    cal = calibration
    n, g_count = cal.num_steps, cal.num_groups
    if max_k is not None and (isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1):
        raise ValueError(f"largest K must be an integer >= 1, got {max_k!r}")
    if not isinstance(max_reuse, int) or not 1 <= max_reuse <= cal.max_horizon:
        raise ValueError(f"max_reuse must be from 1 to {cal.max_horizon} (the calibrated horizon), got {max_reuse!r}")
    allowed = [c for c, (kind, k) in enumerate(cal.candidates)
               if (max_k is None or k <= max_k) and (predictors is None or kind in predictors)]
    if not allowed:
        raise ValueError(f"no calibrated candidate matches max_k={max_k} and predictors={predictors}")
    costs = np.asarray(cal.group_costs, dtype=float)
    weights = np.ones(g_count) if group_weights is None else np.asarray(group_weights, dtype=float)
    table = cal.errors[:, :, :, allowed]                        # (N, G, H+1, C')

    compute = np.ones((n, g_count), dtype=bool)
    protected = set(range(min(protect_first, n))) | set(range(max(n - protect_last, 0), n))
    target = budget * n * costs.sum()
    executed = n * costs.sum()

    def horizon(i, g):  # steps since group g was last computed, if cell i is reused
        h = 1
        while i - h >= 0 and not compute[i - h, g]:
            h += 1
        return h

    def best(i, g, h):
        if h > cal.max_horizon:
            return np.inf, 0
        row = table[i, g, h]
        c = int(np.argmin(row))
        return float(row[c]), c

    def key(i, g):
        err, _ = best(i, g, horizon(i, g))
        return costs[g] / (weights[g] * err ** gamma + delta)

    def run_after(i, g):  # reused cells right after i
        j = i + 1
        while j < n and not compute[j, g]:
            j += 1
        return range(i + 1, j)

    def step_error(i):
        return sum(weights[g] * best(i, g, horizon(i, g))[0] for g in range(g_count) if not compute[i, g])

    if synchronized:
        if step_error_cap is not None:
            raise ValueError("step_error_cap applies to per-group plans only; leave it out with synchronized=True")
        try:
            steps = shortest_schedule(_step_costs(table, weights, protected, max_reuse, gamma), steps_for(budget, n))
        except ValueError:
            raise ValueError(f"budget {budget} is out of reach for whole-step plans: {steps_for(budget, n)} computed "
                             f"steps cannot cover {n} with runs of at most {min(max_reuse, cal.max_horizon)} reused "
                             f"steps between protected ones; raise the budget or max_reuse, or protect fewer "
                             f"steps") from None
        compute[:] = False
        compute[steps] = True
        executed = compute.sum(axis=0) @ costs
    else:
        heap = [(-key(i, g), i, g) for i in range(n) for g in range(g_count) if i not in protected]
        heapq.heapify(heap)
        while heap and executed > target + 1e-9:
            neg, i, g = heapq.heappop(heap)
            if not compute[i, g]:
                continue
            fresh = key(i, g)
            if fresh < -neg - 1e-12:
                heapq.heappush(heap, (-fresh, i, g))   # stale: its horizon grew since it was pushed
                continue
            if not np.isfinite(best(i, g, horizon(i, g))[0]):
                continue
            compute[i, g] = False
            affected = [i, *run_after(i, g)]
            too_long = horizon(affected[-1], g) > max_reuse
            too_wrong = step_error_cap is not None and any(step_error(j) > step_error_cap for j in affected)
            if too_long or too_wrong or not all(np.isfinite(best(j, g, horizon(j, g))[0]) for j in affected):
                compute[i, g] = True    # caps only tighten as more cells are reused: drop it for good
                continue
            executed -= costs[g]

    fraction = executed / (n * costs.sum())
    if executed > target + (0.5 * costs.sum() if synchronized else costs.max()) + 1e-9:
        raise ValueError(f"budget {budget} is out of reach under the caps (reached {fraction:.3f}): raise the "
                         f"budget, max_reuse ({max_reuse}) or step_error_cap ({step_error_cap}), or protect fewer steps")
    meta = {"method": "layercache", "budget": budget, "compute_fraction": fraction, "max_reuse": max_reuse,
            "max_k": max_k, "protect_first": protect_first, "protect_last": protect_last,
            "step_error_cap": step_error_cap, "gamma": gamma, "synchronized": synchronized}
    return schedule_from_mask(cal, compute, meta, allowed)


def schedule_from_mask(cal: Calibration, compute: np.ndarray, meta: dict, allowed=None) -> Schedule:
    """A Schedule from an (N, G) compute mask: each reused cell takes its group's best allowed candidate at its
    horizon (steps since the group last ran), or plain reuse where the table has none."""
    allowed = list(range(len(cal.candidates))) if allowed is None else allowed
    cells = []
    for i, row in enumerate(compute):
        cells.append([])
        for g, on in enumerate(row):
            if on:
                cells[-1].append(Cell(True))
                continue
            h = 1
            while i - h >= 0 and not compute[i - h, g]:
                h += 1
            errors = cal.errors[i, g, h, allowed] if allowed and h <= cal.max_horizon else np.full(1, np.inf)
            c = int(np.argmin(errors))
            kind, k = cal.candidates[allowed[c]] if np.isfinite(errors[c]) else ("slope", 1)
            cells[-1].append(Cell(False, kind, k))
    return Schedule(cal.model_id, list(cal.sigmas), list(cal.group_starts), cal.num_blocks, list(cal.group_costs),
                    cells, meta)


def _step_costs(table: np.ndarray, weights: np.ndarray, protected: set, max_reuse: int, gamma: float):
    """cost[a, c]: summed weighted error^gamma of every group reused on steps a+1 .. c-1 after computing step
    a (each cell's best candidate at its horizon); inf where a run is longer than max_reuse, than the table's
    horizon, or crosses a protected step."""
    n, max_horizon = table.shape[0], table.shape[2] - 1
    best = table.min(axis=-1)                                    # (N, G, H+1)
    cost = np.full((n, n + 1), np.inf)
    for a in range(n):
        total = cost[a, a + 1] = 0.0
        for j in range(a + 1, min(n, a + 1 + min(max_reuse, max_horizon))):
            if j in protected:
                break
            total += float(np.where(weights > 0, weights * best[j, :, j - a] ** gamma, 0.0).sum())
            cost[a, j + 1] = total
    return cost


def reference_latents(pipe, calls: list, num_inference_steps: int) -> list:
    """Final latents of the uncached pipeline on each call: what `plan_verified` compares plans with."""
    from .calibrate import _call_kwargs

    return [pipe(**_call_kwargs(call), num_inference_steps=num_inference_steps, output_type="latent").images.float()
            for call in calls]


# per-cell allocation under three caps on consecutive reuse; synchronized allocation with two error exponents
VERIFIED_CAPS = (*({"max_reuse": r} for r in (2, 3, 4)), *({"synchronized": True, "gamma": g} for g in (1.0, 2.0)))


def plan_verified(pipe, calibration: Calibration, budget: float, calls: list, caps=VERIFIED_CAPS, reference=None,
                  **options) -> Schedule:
    """The plan checked end to end (DESIGN.md §2): the teacher-forced error table cannot see how errors
    injected early or upstream grow through later groups and steps, so plan once per setting (per-cell and
    synchronized allocation: VERIFIED_CAPS), run each plan on the calibration calls
    (never evaluation inputs) and keep the one whose final latents are closest to the uncached ones
    (`reference`, from `reference_latents`; computed if not given). Settings that cannot reach the budget
    are skipped."""
    from . import disable, enable

    budget = check_budget(budget)
    if not calls:
        raise ValueError("plan_verified needs the calibration calls to run the candidate plans on")
    steps = calibration.num_steps
    if reference is None:
        reference = reference_latents(pipe, calls, steps)
    best, best_error, tried = None, np.inf, {}
    for cap in caps:
        try:
            schedule = plan(calibration, budget, **{**options, **cap})
        except ValueError:
            continue
        enable(pipe, schedule, telemetry=False)
        try:
            latents = reference_latents(pipe, calls, steps)
        finally:
            disable(pipe)
        error = float(np.mean([((a - b) ** 2).mean().item() for a, b in zip(latents, reference)]))
        tried[",".join(f"{k}={v}" for k, v in sorted(cap.items()))] = error
        if error < best_error:
            best, best_error = schedule, error
    if best is None:
        raise ValueError(f"budget {budget} is out of reach under every cap setting tried ({list(caps)})")
    best.meta["verified"] = {"calibration_mse": tried, "calls": len(calls)}
    return best
