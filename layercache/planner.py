"""Budget allocation over (step, group, K), exact for the calibration's error model (docs/design.md, "Planner").

Predictors fit a group's *computed* residuals only (its anchors), so the error of a reused cell depends only on
the group's last computed steps before it, never on what the plan predicted elsewhere. With the span-2 slope,
that is the last two computed steps (p, a); a plan's error is then a sum over runs of reused cells, and the plan
with B computed steps of least error is a shortest path over states (p, a): exact dynamic programming on the
calibration's Gram matrices, no caps, no protected steps, no tuning per step count.

Two allocations, sharing that path search:
  "steps"  (default) all groups computed on the same steps, each reused group with its own predictor and K.
  "groups" each group its own computed steps; the budget split across groups exactly (a knapsack over each
           group's error-versus-steps frontier).
The error model is teacher-forced: it cannot see that a group computed on inputs that predicted groups upstream
made drifts, nor how an early error grows by the end, which is why `plan_verified` runs candidate plans end to
end on the calibration calls and keeps the best.
After the path search each reused cell takes the allowed (predictor, K) whose error on its real anchors is
least (K >= 3 enter here: they need more anchors than the path's state holds).
"""

import math
from dataclasses import replace

import numpy as np

from .calibrate import Calibration, call_kwargs, prediction_weights
from .predictors import MIN_K, PREDICTORS
from .schedule import MAX_K, REUSE, Cell, Schedule

ALLOCATIONS = ("steps", "groups")
OBJECTIVES = ("residuals", "outputs", "uniform", "regular")
# Which fully reused steps of a whole-step plan a hybrid plan makes velocity steps (`hybrid_steps`).
HYBRIDS = ("alternate", "late")


class OutOfReach(ValueError):
    """The budget cannot be met under the plan's constraints (a ValueError, so callers may catch either)."""


def check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget is the fraction of block compute to execute and must be in (0, 1], got {budget!r}")
    return float(budget)


def check_reused_call_cost(cost) -> float:
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < 1:
        raise ValueError(f"reused_call_cost is a fully reused call's cost as a fraction of a computed call, in [0, 1); "
                         f"got {cost!r}")
    return float(cost)


def block_budget(budget: float, reused_call_cost: float = 0.0) -> float:
    """The fraction of block compute a non-velocity plan may run so that its blocks and its reused calls' floor
    together cost `budget` of the uncached time: every call pays `reused_call_cost` c (a fully reused call's share of
    a computed one), a computed block the rest, so b = c + (1 - c)·blocks for any allocation. Velocity plans call
    nothing on reused steps and run `budget` itself."""
    check_reused_call_cost(reused_call_cost)
    blocks = (budget - reused_call_cost) / (1 - reused_call_cost)
    if blocks <= 0:
        raise OutOfReach(f"budget {budget} does not pay for the reused calls alone (each costs {reused_call_cost:g} "
                         f"of a computed one); raise the budget or use velocity steps (velocity=True)")
    return blocks


def steps_for(budget: float, num_steps: int) -> int:
    """round(N·b), halves rounded up (toward more compute for the method), at least 1."""
    return min(num_steps, max(1, math.floor(num_steps * budget + 0.5)))


def shortest_schedule(cost: np.ndarray, budget_steps: int) -> list[int]:
    """The computed steps (exactly `budget_steps`, step 0 among them) minimizing the summed edge cost of
    consecutive computed steps (and of the last one to the end, column N). Dynamic programming, O(B·N²).
    MeanCache's schedule; LayerCache's own search (`_paths`) carries two anchors instead of one."""
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


# ---------------------------------------------------------------- error model

def cell_errors(cal: Calibration, group: int | None, use_slope: bool, gamma: float) -> np.ndarray:
    """cost[p, a, i]: the cost of reusing group `group` (None: every group, the whole stack) at step i when its last
    two computed steps are p < a (p = N: a is its only one), the better of plain reuse and the span-2 slope.
    Squared L2 error relative to the step's summed residual energy over all groups, weighted by the step's share
    of sigma (an error in the velocity moves the sample by dsigma times it), to the power gamma / 2; inf where
    undefined. For the whole stack the error is that of the groups' summed prediction, cross terms included."""
    gram = cal.gram.astype(np.float64)
    m = gram.sum(axis=(0, 1)) if group is None else gram[group, group]
    n = cal.num_steps
    grid = np.append(np.asarray(cal.sigmas, dtype=np.float64), 0.0)
    dsigma = (grid[:-1] - grid[1:]) / ((grid[0] - grid[-1]) / n)
    scale = np.maximum(np.einsum("ggii->i", gram), 1e-30) / dsigma ** 2   # (N,)
    d = np.diag(m)
    plain = (d[:, None] - 2 * m + d[None, :]) / scale[None, :]                                  # [a, i]
    cost = np.broadcast_to(plain, (n + 1, n, n)).copy()
    if use_slope:
        p, a, i = np.ix_(range(n), range(n), range(n))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (grid[i] - grid[a]) / (grid[a] - grid[p])
            b = (d[a] - m[p, a] - m[a, i] + m[p, i]) / scale[i]      # <D_a - D_i, D_a - D_p>
            c = (d[a] - 2 * m[p, a] + d[p]) / scale[i]               # |D_a - D_p|^2
            slope = plain[None] + 2 * r * b + r ** 2 * c
        valid = (p < a) & (a < i)
        cost[:n] = np.where(valid, np.minimum(cost[:n], np.maximum(slope, 0.0)), np.inf)
    cost[:n][np.arange(n)[:, None] >= np.arange(n)[None, :]] = np.inf   # p >= a is no state
    cost = np.maximum(cost, 0.0) ** (gamma / 2)
    cost[:, np.arange(n)[:, None] >= np.arange(n)[None, :]] = 0.0     # i <= a: not a reused cell of this run
    return cost


def _runs(cell: np.ndarray, max_reuse: int | None) -> np.ndarray:
    """run[p, a, c]: summed cost of reusing every step a+1 .. c-1 after computing a (c = N: to the end);
    inf where c <= a, the state is none, or the run is longer than max_reuse."""
    n = cell.shape[1]
    run = np.full((n + 1, n, n + 1), np.inf)
    run[:, :, 1:] = np.cumsum(cell, axis=2)
    a, c = np.arange(n)[:, None], np.arange(n + 1)[None, :]
    run[:, (c <= a) | ((c - a - 1 > max_reuse) if max_reuse is not None else False)] = np.inf
    return run


def _paths(run: np.ndarray, counts) -> dict:
    """{j: (cost, computed steps)} for each j in counts: the least-cost choice of exactly j computed steps
    (step 0 first), a shortest path over states (previous computed step, last computed step)."""
    n = run.shape[1]
    best = np.full((n + 1, n), np.inf)
    best[n, 0] = 0.0                     # one computed step, step 0, no earlier anchor
    parents, found = {}, {}
    for j in range(1, max(counts) + 1):
        if j in counts:
            finals = best + run[:, :, n]
            p, a = np.unravel_index(int(np.argmin(finals)), finals.shape)
            steps, back = [int(a)], j
            while back > 1:
                steps.append(int(p))
                p, a = parents[back - 1][p, a], p
                back -= 1
            found[j] = (float(finals.min()), steps[::-1])
        if j == max(counts):
            break
        totals = best[:, :, None] + run[:, :, :n]                # (p, a, c)
        parents[j] = totals.argmin(axis=0)                          # [a, c] -> p
        best = np.full((n + 1, n), np.inf)
        best[:n] = totals.min(axis=0)
    return found


# ---------------------------------------------------------------- the two allocations

# What a velocity step predicts the transformer's output with, K chosen per gap on the calibrated outputs: MeanCache's
# estimator. The slope and the parabola were tried too (chosen per gap on the same chained costs): on the bundled
# model's evaluation seeds they lost 2.6-9.3 dB to it in four of five cells at 10-20 steps (docs/design.md).
MEANCACHE_PREDICTORS = tuple(("mean", k) for k in (1, 2, 3, 4))


def output_costs(cal: Calibration, predictors, gamma: float):
    """`meancache.output_costs` on the calibration's transformer outputs."""
    from .meancache import output_costs as costs

    if cal.outputs.ndim != 3 or cal.outputs.shape[1] != cal.num_steps:
        raise ValueError("this calibration has no transformer outputs; recalibrate to plan on the outputs")
    return costs(cal.outputs, cal.sigmas, predictors, gamma)


def _steps_allocation(cal, budget, use_slope, gamma, max_reuse, objective, outputs=None, pattern=None):
    n = cal.num_steps
    count = steps_for(budget, n)
    if objective == "uniform":   # no model: the computed steps evenly spread, step 0 first
        steps, error = sorted({round(j * n / count) for j in range(count)}), float("nan")
        if max_reuse is not None and max(np.diff(steps + [n])) - 1 > max_reuse:
            error = np.inf
    elif objective == "outputs":   # chained prediction of the transformer's output (MeanCache's step costs)
        cost, _ = outputs if outputs is not None else output_costs(cal, MEANCACHE_PREDICTORS, gamma)
        cost = cost.copy()
        if max_reuse is not None:
            cost[np.arange(n)[:, None] + max_reuse + 1 < np.arange(n + 1)[None, :]] = np.inf
        try:
            steps = shortest_schedule(cost, count)
            error = float(sum(cost[a, c] for a, c in zip(steps, steps[1:] + [n])))
        except ValueError:
            steps, error = [], np.inf
    elif objective == "regular":   # a warm-up, then one step in `interval`: the best such pair by the error model
        run = _runs(cell_errors(cal, None, use_slope, gamma), max_reuse)
        pairs = ([regular_steps(*pattern, n)] if pattern else
                 [regular_steps(i, w, n) for i in range(1, n + 1) for w in range(1, count + 1)])
        error, steps = min(((_path_cost(run, st), st) for st in pairs if len(st) == count), default=(np.inf, []))
        if pattern and not steps:
            raise OutOfReach(f"pattern {pattern} computes {len(pairs[0])} steps, not the budget's {count}; choose one "
                             f"of regular_patterns({n}, {budget})")
    else:
        error, steps = _paths(_runs(cell_errors(cal, None, use_slope, gamma), max_reuse), {count})[count]
    if np.isinf(error):
        raise OutOfReach(f"budget {budget} is out of reach: {count} computed steps cannot cover {n} with runs of "
                         f"at most {max_reuse} reused steps; raise the budget or max_reuse")
    compute = np.zeros((n, cal.num_groups), dtype=bool)
    compute[steps] = True
    return compute, error


def regular_steps(interval: int, warmup: int, num_steps: int) -> list[int]:
    """The first `warmup` steps, then one step in `interval` (the pattern of TaylorSeer's cache_interval and
    disable_cache_before_step)."""
    return [s for s in range(num_steps) if s < warmup or (s - warmup - 1) % interval == 0]


PEER_PATTERNS = 3   # how many regular patterns TaylorSeer's tuning tries per budget (and `plan_verified` with it)


def regular_patterns(num_steps: int, budget: float, count: int = PEER_PATTERNS) -> list[tuple[int, int]]:
    """The (interval, warm-up) pairs whose regular pattern computes closest to round(N·budget) steps, most frequent
    refresh first, at most `count`: the points TaylorSeer's tuning tries (`evaluation.baselines`)."""
    target = steps_for(budget, num_steps)
    pairs = sorted((abs(len(regular_steps(i, w, num_steps)) - target), i, w)
                   for i in range(1, num_steps + 1) for w in range(1, num_steps + 1))
    return [(i, w) for miss, i, w in pairs if miss == pairs[0][0]][:count]


def _path_cost(run: np.ndarray, steps: list) -> float:
    """The error model's cost of whole-step plan `steps` (step 0 first), from `_runs`."""
    n = run.shape[1]
    previous = [n] + steps[:-1]
    return float(sum(run[p, a, c] for p, a, c in zip(previous, steps, steps[1:] + [n])))


def _groups_allocation(cal, budget, use_slope, gamma, max_reuse, objective):
    n, costs = cal.num_steps, np.asarray(cal.group_costs, dtype=float)
    per_group = [_paths(_runs(cell_errors(cal, g, use_slope, gamma), max_reuse), set(range(1, n + 1)))
                 for g in range(cal.num_groups)]
    # knapsack over the groups' (compute, error) frontiers, keeping only non-dominated partial choices
    frontier = [(0.0, 0.0, ())]
    for g, found in enumerate(per_group):
        merged = sorted((spent + costs[g] * j, error + found[j][0], picks + (j,))
                        for spent, error, picks in frontier for j in found if np.isfinite(found[j][0]))
        frontier, least = [], np.inf
        for point in merged:
            if point[1] < least - 1e-15:
                frontier.append(point)
                least = point[1]
    target = max(budget * n, 1) * costs.sum() + 1e-9 * costs.sum()   # step 0 is always computed
    affordable = [point for point in frontier if point[0] <= target]
    if not affordable:
        raise OutOfReach(f"budget {budget} is out of reach for per-group plans under max_reuse={max_reuse}; raise "
                         f"the budget or max_reuse")
    _, error, picks = min(affordable, key=lambda point: point[1])
    compute = np.zeros((n, cal.num_groups), dtype=bool)
    for g, j in enumerate(picks):
        compute[per_group[g][j][1], g] = True
    return compute, error


def plan(calibration: Calibration, budget: float, allocation: str = "steps", max_k: int | None = None,
         predictors=None, max_reuse: int | None = None, gamma: float = 2.0, objective: str = "residuals",
         fixed: tuple | None = None, velocity: bool = False, pattern: tuple | None = None,
         reuse: str = "residuals", reused_call_cost: float = 0.0, hybrid: str | None = None) -> Schedule:
    """The plan of least predicted error that executes at most `budget` of the block compute (of the uncached time,
    with `reused_call_cost`).

    Args:
        calibration: from `calibrate` (or `Calibration.load`), for the model, step count and grouping to run.
        budget: fraction of block compute to execute, in (0, 1]; whole-step plans compute round(N·budget) steps.
        allocation: "steps" (all groups on the same steps; the default) or "groups" (each group its own steps).
        max_k: largest predictor span K (1 = plain reuse only); None allows every calibrated K.
        predictors: predictor kinds allowed (default: all calibrated ones).
        max_reuse: longest run of consecutive reused steps of a group; None for no limit.
        gamma: errors enter the objective as error**gamma (2: squared errors add up).
        objective: what whole steps are chosen on: "residuals" (the groups' anchored errors, exact DP),
            "outputs" (the transformer output's chained prediction error, MeanCache's step costs) or "uniform"
            (evenly spread, no model) or "regular" (a warm-up, then one step in an interval: the best such pattern
            by the residuals' error model).
        pattern: objective "regular" only: this (interval, warm-up) instead of the error model's best; it must
            compute round(N·budget) steps (`regular_patterns` lists those a budget allows).
        fixed: a (predictor, K) every reused cell takes, instead of each cell's least error by the error model
            (which is teacher-forced: end to end, one predictor throughout is sometimes better). Any predictor
            within max_k and predictors, calibrated or not: a plan's predictors need the calibration's Gram only.
        velocity: whole-step plans only: make every reused step a velocity step (the transformer not called, its
            output predicted with MeanCache's estimator, K up to max_k chosen per gap on the calibrated outputs).
        hybrid: whole-step plans only: make some reused steps velocity steps (as `velocity`) and leave the others
            reusing the groups' residuals (or outputs): "alternate" every other reused step, "late" the second half
            of each run of reused steps (`hybrid_steps`). Each velocity step calls nothing, so the plan pays the
            floor of a reused call on fewer steps; charged (`reused_call_cost`) as if it paid it on every one.
        reuse: what a reused group predicts (`Schedule.reuse`): its residual ("residuals"), or its output
            ("outputs", TaylorSeer's form). The error model scores residuals: the steps and predictors are chosen
            as for "residuals", and only an end-to-end check (`plan_verified`) tells which is better.
        reused_call_cost: what a call with every group reused costs, as a fraction of a computed call (embeddings,
            output layer, hooks; `evaluation.overhead.reused_call_cost` times it). The plan then runs fewer blocks,
            so that blocks and reused calls together fit in `budget` (`block_budget`); velocity plans are not charged
            (a velocity step calls nothing). 0 (default): `budget` counts blocks only.

    Example:
        >>> cal = layercache.calibrate(pipe, [{"prompt": "a fox", "seed": 1}], num_inference_steps=30)
        >>> schedule = layercache.plan(cal, budget=0.5)      # 2x fewer block FLOPs
        >>> schedule.save("fox_30steps_b0.5.json")
    """
    budget = check_budget(budget)
    cal = calibration
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if max_k is not None and (isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1):
        raise ValueError(f"largest K must be an integer >= 1, got {max_k!r}")
    if max_reuse is not None and (isinstance(max_reuse, bool) or not isinstance(max_reuse, int) or max_reuse < 1):
        raise ValueError(f"max_reuse must be an integer >= 1 or None, got {max_reuse!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if allocation == "groups" and objective != "residuals":
        raise ValueError("per-group plans are chosen on the residuals; use objective='residuals'")
    if reuse not in REUSE:
        raise ValueError(f"reuse must be one of {REUSE}, got {reuse!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    if pattern is not None:
        if objective != "regular" or allocation != "steps":
            raise ValueError("a pattern sets a regular whole-step plan: use objective='regular', allocation='steps'")
        if (not isinstance(pattern, (tuple, list)) or len(pattern) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pattern)):
            raise ValueError(f"pattern must be (interval, warm-up), two integers >= 1, got {pattern!r}")
    if hybrid is not None:
        if hybrid not in HYBRIDS:
            raise ValueError(f"hybrid must be one of {HYBRIDS} or None, got {hybrid!r}")
        if velocity or allocation != "steps":
            raise ValueError("a hybrid plan is a whole-step plan with some reused steps velocity steps: use "
                             "allocation='steps' and velocity=False")
    reused_call_cost = check_reused_call_cost(reused_call_cost)
    blocks = budget if velocity else block_budget(budget, reused_call_cost)
    allowed = allowed_candidates(cal, max_k, predictors)
    if not allowed:
        raise ValueError(f"no calibrated candidate matches max_k={max_k} and predictors={predictors}")
    use_slope = any(tuple(cal.candidates[c]) == ("slope", 2) for c in allowed)   # `fixed` does not move the steps
    pairs = [tuple(cal.candidates[c]) for c in allowed]
    if fixed is not None:
        if not fits(fixed, max_k, predictors):
            raise ValueError(f"fixed must be a (predictor, K) pair allowed here: a predictor of "
                             f"{tuple(predictors or PREDICTORS)}, K from the predictor's least {MIN_K} to "
                             f"{min(max_k or MAX_K, MAX_K)} (max_k); got {fixed!r}")
        pairs = [tuple(fixed)]
    outputs = None   # velocity steps: their predictors' chained output costs (cost, best), computed once
    if velocity or hybrid:
        if allocation != "steps":
            raise ValueError("velocity steps are whole steps: use allocation='steps'")
        output_predictors = [(kind, k) for kind, k in MEANCACHE_PREDICTORS if max_k is None or k <= max_k]
        outputs = output_costs(cal, output_predictors, float(gamma))
    if allocation == "steps":
        compute, error = _steps_allocation(cal, blocks, use_slope, float(gamma), max_reuse, objective,
                                           outputs if velocity else None,   # a hybrid keeps its residual plan's steps
                                           None if pattern is None else tuple(pattern))
    else:
        compute, error = _groups_allocation(cal, blocks, use_slope, float(gamma), max_reuse, objective)
    meta = {"method": "layercache", "allocation": allocation, "objective": objective, "budget": budget, "max_k": max_k,
            "max_reuse": max_reuse, "gamma": gamma, "fixed": None if fixed is None else list(fixed),
            "velocity": velocity, "pattern": None if pattern is None else list(pattern), "reuse": reuse,
            "reused_call_cost": reused_call_cost, "block_budget": blocks, "predicted_error": error, "hybrid": hybrid}
    schedule = replace(schedule_from_mask(cal, compute, meta, pairs), reuse=reuse)
    if velocity or hybrid:
        velocity_steps = hybrid_steps(compute[:, 0], hybrid) if hybrid else np.flatnonzero(~compute[:, 0])
        schedule = _velocity_steps(schedule, compute[:, 0], output_predictors, outputs[1], velocity_steps)
    schedule.meta["compute_fraction"] = schedule.compute_fraction
    return schedule


def _velocity_steps(schedule: Schedule, computed: np.ndarray, predictors, best: np.ndarray, velocity_steps) -> Schedule:
    """The whole-step plan with `velocity_steps` (reused steps) velocity steps, each taking its gap's (predictor, K)
    of least chained output error (`best`, from `output_costs`)."""
    cells, velocity_steps = list(schedule.cells), {int(i) for i in velocity_steps}
    steps = np.flatnonzero(computed).tolist()
    for a, c in zip(steps, steps[1:] + [len(cells)]):
        for i in velocity_steps.intersection(range(a + 1, c)):
            cells[i] = [Cell(False, *predictors[best[a, c]])] * schedule.num_groups
    return replace(schedule, cells=cells, velocity_steps=sorted(velocity_steps))   # validated


def hybrid_steps(computed: np.ndarray, rule: str) -> list[int]:
    """The reused steps (`computed` False) a hybrid plan makes velocity steps: every other one ("alternate", from
    the first) or the second half of each run between computed steps ("late"; a run of one step included)."""
    reused = np.flatnonzero(~np.asarray(computed, bool))
    if rule == "alternate":
        return reused[::2].tolist()
    runs = np.split(reused, np.flatnonzero(np.diff(reused) > 1) + 1)
    return [int(i) for run in runs for i in run[len(run) // 2:]]


def allowed_candidates(cal: Calibration, max_k=None, predictors=None) -> list[int]:
    return [c for c, (kind, k) in enumerate(cal.candidates)
            if (max_k is None or k <= max_k) and (predictors is None or kind in predictors)]


def fits(pair, max_k=None, predictors=None) -> bool:
    """Is `pair` a (predictor, K) a plan may use under max_k and predictors?"""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        return False
    kind, k = pair
    return (kind in PREDICTORS and (predictors is None or kind in predictors) and isinstance(k, int)
            and not isinstance(k, bool) and MIN_K[kind] <= k <= min(max_k or MAX_K, MAX_K))


def schedule_from_mask(cal: Calibration, compute: np.ndarray, meta: dict, candidates=None) -> Schedule:
    """A Schedule from an (N, G) compute mask: on each step, the reused groups take the allowed (predictor, K) each
    whose summed error on their real anchors (each group's last computed steps) is least. Summed, because the
    groups' errors add up in the stack's output and may cancel: a choice that is best for each group alone can
    be worse together (cross-group Gram, `Calibration.gram`)."""
    candidates = [tuple(c) for c in (cal.candidates if candidates is None else candidates)]
    n, groups = compute.shape
    gram = cal.gram.astype(np.float64)
    cells = [[Cell(True) for _ in row] for row in compute]
    for i in range(n):
        reused = [g for g in range(groups) if not compute[i, g]]
        if not reused:
            continue
        # error vectors over steps: the predictor's weights on the group's anchors, -1 at the target step
        vectors = np.zeros((len(reused), len(candidates), n))
        for r, g in enumerate(reused):
            anchors_all = np.flatnonzero(compute[:i, g]).tolist()
            for j, (kind, k) in enumerate(candidates):
                anchors = anchors_all[-k:]
                vectors[r, j, anchors] = prediction_weights(kind, k, anchors, i, cal.sigmas)
                vectors[r, j, i] = -1.0
        pairs = np.einsum("rcn,rsnm,sdm->rcsd", vectors, gram[np.ix_(reused, reused)], vectors)
        picks = _least_sum(pairs)
        for r, g in enumerate(reused):
            cells[i][g] = Cell(False, *candidates[picks[r]])
    return Schedule(cal.model_id, list(cal.sigmas), list(cal.group_starts), cal.num_blocks, list(cal.group_costs),
                    cells, meta)


def _least_sum(pairs: np.ndarray, exhaustive_limit: int = 20000) -> list[int]:
    """The choice c_r per group r minimizing sum_{r,s} pairs[r, c_r, s, c_s] (a squared error): every combination
    when there are few, else coordinate descent from the best common choice. Ties go to the earlier candidate."""
    groups, choices = pairs.shape[:2]
    if choices ** groups <= exhaustive_limit:
        combos = np.indices((choices,) * groups).reshape(groups, -1).T             # (combos, groups)
        totals = sum(pairs[r, combos[:, r], s, combos[:, s]] for r in range(groups) for s in range(groups))
        return combos[int(np.argmin(totals))].tolist()
    picks = [int(np.argmin([pairs[:, c, :, c].sum() for c in range(choices)]))] * groups
    for _ in range(10 * groups):
        changed = False
        for r in range(groups):
            others = [s for s in range(groups) if s != r]
            totals = pairs[r, :, r, :].diagonal() + 2 * sum(pairs[r, :, s, picks[s]] for s in others)
            best = int(np.argmin(totals))
            if totals[best] < totals[picks[r]] - 1e-15:
                picks[r], changed = best, True
        if not changed:
            break
    return picks


# ---------------------------------------------------------------- checked end to end

def image_errors(outputs: list, reference: list) -> np.ndarray:
    """The log of each image's mean squared distance to its uncached image (floored at 1e-10, where the benchmark caps
    PSNR at 100 dB): −PSNR · ln(10) / 10 per image, in the calls' order."""
    return np.concatenate([np.log(np.maximum(((a - b) ** 2).flatten(1).mean(1).double().cpu().numpy(), 1e-10))
                           for a, b in zip(outputs, reference)])


def output_error(outputs: list, reference: list) -> float:
    """The end-to-end check: the mean over every image of the log of its mean squared distance to the uncached
    image (`image_errors`). The log makes it the figure a mean PSNR averages, so plans rank as their mean PSNR ranks
    them; in the mean of the squared distances one image far off outweighs every other."""
    return float(image_errors(outputs, reference).mean())


# How far ahead, in standard errors of the mean paired per-image difference, a plan must be on the calibration calls
# to be rechecked instead of a faster plan of its family (the same computed steps, more of the reused ones velocity
# steps, which call nothing, so faster by the floor a reused call pays; docs/design.md, "Planner").
BEYOND_NOISE_SE = 2.0


def clearly_better(errors: np.ndarray, than: np.ndarray) -> bool:
    """Are per-image `errors` lower than `than` (the same images, paired) by more than BEYOND_NOISE_SE standard errors
    of the mean difference?"""
    difference = np.asarray(errors) - np.asarray(than)
    spread = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return bool(difference.mean() < (-BEYOND_NOISE_SE * spread if spread > 0 else 0.0))   # no spread: any lead


def fastest_within_noise(best: str, family: list, transformer_calls: dict, per_image: dict) -> str:
    """The plan of a family (plans computing the same cells, `best` the best of them on the first calls) to recheck:
    the one that calls the transformer least (`transformer_calls`; a velocity step calls nothing, a reused step that
    predicts the groups pays the call's floor) among those `best` is not `clearly_better` than, by each plan's
    `per_image` errors; `best` where it is clearly better than every faster one. So a hybrid is rechecked only
    where it beats the family's velocity plan beyond noise, as a residual plan must beat both (docs/design.md,
    "Planner")."""
    for name in sorted(family, key=transformer_calls.get):   # stable: equally fast plans keep their rank order
        if transformer_calls[name] >= transformer_calls[best]:
            break
        if not clearly_better(per_image[best], per_image[name]):
            return name
    return best


def reference_outputs(pipe, calls: list, num_inference_steps: int) -> list:
    """The pipeline's images (`output_type="pt"`, decoded and clamped to [0, 1]) on each call: what `plan_verified`
    compares plans by: what a user sees and the benchmark's PSNR scores. Final latents rank plans differently where
    they leave the image's range (a digit's background is −1; docs/design.md, "Planner")."""
    return [pipe(**call_kwargs(call), num_inference_steps=num_inference_steps, output_type="pt").images.float()
            for call in calls]


# How many settings a check runs again on its recheck calls before choosing: the first round's winner among ~40
# candidates within noise of each other is partly luck on twenty images (at 30 steps and 0.35 a plan 2.7 dB worse on
# the evaluation seeds came out first, 0.26 ± 0.36 ahead), so the best of each of the best few families is compared
# again on other images, and only on those.
RECHECK_FINALISTS = 4


def recheck(ranked: list, recheck_error, family=lambda setting: setting, prefer=lambda best: best) -> dict:
    """The finalists' errors on the recheck calls alone (`recheck_error(c)`, run only for them): the best of each of
    the RECHECK_FINALISTS best families in `ranked` (best first on the first calls). A family is the settings that
    compute the same cells and differ only in how they predict the others (`family(c)`; default: each setting its
    own). Why families: at `tiny` 20 / 0.2 the four best plans were one step choice with four predictors, the lucky
    one on the calibration images, and MeanCache's plan (1.5 dB better on the evaluation images) never ran again.
    Why the recheck images alone: the first round chose its finalists on the calibration images, so on those they
    lead by luck as well (docs/design.md, "Planner"). `prefer(best)`: the setting a family is rechecked with, given
    its best (`plan_verified`: its fastest plan the best is not clearly better than, `fastest_within_noise`).
    `plan_verified` and the benchmark's tuning choose with it."""
    best = {}
    for setting in ranked:
        best.setdefault(family(setting), setting)
    best = {key: prefer(setting) for key, setting in list(best.items())[:RECHECK_FINALISTS]}
    return {c: recheck_error(c) for c in best.values()}


# Whole steps chosen on the residuals (squared and absolute errors), on the outputs, evenly spread and in a regular
# pattern, the outputs and evenly spread also with MeanCache's estimator only (it stays bounded over the long gaps they
# leave); MeanCache's steps as velocity steps (the transformer's output predicted, squared and absolute errors);
# per-group plans.
WHOLE_STEP_OPTIONS = ({"gamma": 2.0}, {"gamma": 1.0}, {"objective": "outputs"},
                      {"objective": "outputs", "predictors": ("mean",)}, {"objective": "uniform"},
                      {"objective": "uniform", "predictors": ("mean",)}, {"objective": "regular"},
                      {"objective": "outputs", "velocity": True},
                      {"objective": "outputs", "velocity": True, "gamma": 1.0})
VERIFIED_OPTIONS = (*({"allocation": "steps", **o} for o in WHOLE_STEP_OPTIONS), {"allocation": "groups", "gamma": 2.0})
# One predictor throughout, tried on the steps of the best plans: the error model picks each cell's predictor
# teacher-forced, and end to end the JVP slope, MeanCache's estimator, the parabola through three anchors or
# TaylorSeer's damped second order on every reused cell is sometimes better.
FIXED_PREDICTORS = (("slope", 2), ("mean", 2), ("quadratic", 3), ("taylor", 3))


PEER_ORDERS = (("taylor", 2), ("taylor", 3))   # TaylorSeer's orders 1 and 2, the ones its tuning tries


def verified_options(num_steps: int, budget: float, reused_call_cost: float = 0.0) -> list[dict]:
    """What `plan_verified` checks by default: VERIFIED_OPTIONS, then the regular patterns TaylorSeer's tuning tries
    at this budget (`regular_patterns`), each with LayerCache's predictors, and with TaylorSeer's expansion of each
    order it tries (`PEER_ORDERS`) throughout, on the groups' residuals and on their outputs (`reuse="outputs"`:
    TaylorSeer itself, to float rounding). The teacher-forced error model ranks regular patterns poorly (at 50
    steps and 4x it prefers a warm-up of 4 and an interval of 5; end to end a warm-up of 1 and an interval of 4 is
    better), so the check runs the peer's own candidates: with MeanCache's steps as velocity steps (MeanCache itself)
    and TaylorSeer's plans among the options, LayerCache never chooses among fewer plans than a peer it is compared
    with, nor among other plans than the peer's own. With `reused_call_cost` the patterns are those of the block
    budget the residual plans run (`block_budget`)."""
    try:
        patterns = regular_patterns(num_steps, block_budget(budget, reused_call_cost))
    except OutOfReach:   # no residual plan fits; the velocity options still may
        patterns = []
    return [*VERIFIED_OPTIONS, *(option for p in patterns for option in pattern_options(p))]


def pattern_options(pattern: tuple) -> list[dict]:
    """`verified_options`' plans on one regular pattern: LayerCache's predictors, then each of TaylorSeer's orders
    throughout on the residuals and on the outputs."""
    regular = {"allocation": "steps", "objective": "regular", "pattern": pattern}
    return [regular, *({**regular, "fixed": f, **r} for f in PEER_ORDERS for r in ({}, {"reuse": "outputs"}))]


def option_name(option: dict) -> str:
    return ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(option.items()))


def plan_verified(pipe, calibration: Calibration, budget: float, calls: list, candidates=None,
                  reference=None, progress=None, fixed_predictors=FIXED_PREDICTORS, refine: int = 3,
                  recheck_calls=None, recheck_reference=None, hybrids=HYBRIDS, **options) -> Schedule:
    """The plan checked end to end: plan once per option set in `candidates` (default `verified_options`), run each
    plan on the calibration calls (never evaluation inputs) and keep the one whose images are closest to the
    uncached ones (`reference`, from `reference_outputs`; computed if not given). Then the `refine` best plans'
    steps are tried again with each of `fixed_predictors` on every reused cell, and then the `refine` best whole-step
    plans that have no velocity step with each of `hybrids` (`plan`'s hybrid: some reused steps velocity steps).
    With `recheck_calls` (other inputs, never evaluation ones), the best plan of each of the RECHECK_FINALISTS best
    families (plans computing the same cells; instead of that best, the family's fastest plan it is not
    `clearly_better` than on the calibration calls, `fastest_within_noise`: the same steps, fewer calls) runs on
    them too and the one of least error on them is kept (`recheck`). Option sets that cannot reach the budget are
    skipped; argument errors reach the caller. `progress(done, total)` is called before each run.

    Example:
        >>> schedule = plan_verified(pipe, cal, 0.5, calls)     # the calls `cal` was calibrated on
        >>> schedule.meta["verified"]["calibration_error"]      # every option's end-to-end error
    """
    from .hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache

    budget = check_budget(budget)
    if not calls:
        raise ValueError("plan_verified needs the calibration calls to run the candidate plans on")
    steps = calibration.num_steps
    candidates = (verified_options(steps, budget, options.get("reused_call_cost", 0.0)) if candidates is None
                  else list(candidates))
    if reference is None:
        reference = reference_outputs(pipe, calls, steps)
    tried, seen, plans, per_image = {}, {}, {}, {}
    allowed = allowed_candidates(calibration, options.get("max_k"), options.get("predictors"))
    fixed = [f for f in fixed_predictors if fits(f, options.get("max_k"), options.get("predictors"))
             and "fixed" not in options]
    finalists = RECHECK_FINALISTS if recheck_calls else 0
    total = len(candidates) + refine * (len(fixed) + len(hybrids)) + finalists

    def run(schedule: Schedule, on_calls: list) -> list:
        apply_layer_cache(pipe.transformer, LayerCacheConfig(schedule, telemetry=False))
        try:
            return reference_outputs(pipe, on_calls, steps)
        finally:
            remove_layer_cache(pipe.transformer)

    def check(option: dict, done: int):
        if progress is not None:
            progress(done, total)
        settings = {**option, **options}   # the caller's settings win over an option set's
        if not allowed_candidates(calibration, settings.get("max_k"), settings.get("predictors")) and allowed:
            return   # e.g. MeanCache's estimator only, under max_k=1: no such candidate, the others still apply
        if "fixed" in option and "fixed" not in options and not fits(option["fixed"], settings.get("max_k"),
                                                                    settings.get("predictors")):
            return   # an option's fixed predictor outside the caller's max_k or predictors
        try:
            schedule = plan(calibration, budget, **settings)
        except OutOfReach:
            return
        name = option_name(option)
        cells = schedule.actions()
        if cells in seen:   # the same plan as an earlier option: same end-to-end error
            tried[name] = tried[seen[cells]]
            return
        seen[cells] = name
        per_image[name], plans[name] = image_errors(run(schedule, calls), reference), (option, schedule)
        tried[name] = float(per_image[name].mean())

    for index, option in enumerate(candidates):
        check(option, index)
    first = sorted(plans, key=tried.get)[:refine]
    for index, (name, predictor) in enumerate((n, f) for n in first for f in fixed):
        # `fixed` replaces the choice of predictor; at velocity steps it is tried on the groups' residuals instead
        steps_of = {k: v for k, v in plans[name][0].items() if k not in ("predictors", "velocity")}
        check({**steps_of, "fixed": tuple(predictor)}, len(candidates) + index)
    whole_steps = [n for n in sorted(plans, key=tried.get) if plans[n][0].get("allocation", "steps") == "steps"
                   and options.get("allocation", "steps") == "steps" and not plans[n][1].velocity_steps][:refine]
    for index, (name, rule) in enumerate((n, h) for n in whole_steps for h in hybrids):
        check({**plans[name][0], "hybrid": rule}, len(candidates) + refine * len(fixed) + index)
    if not plans:
        raise OutOfReach(f"budget {budget} is out of reach under every option tried ({list(candidates)})")
    chosen, rechecked = min(plans, key=tried.get), {}
    if recheck_calls:
        if recheck_reference is None:
            recheck_reference = reference_outputs(pipe, recheck_calls, steps)
        def recheck_error(name: str) -> float:
            if progress is not None:
                progress(total - finalists + len(ran), total)
            ran.append(name)
            return output_error(run(plans[name][1], recheck_calls), recheck_reference)

        ranked = sorted(plans, key=tried.get)
        family = {n: str([[cell.compute for cell in row] for row in plans[n][1].cells]) for n in ranked}

        transformer_calls = {n: steps - len(plans[n][1].velocity_steps) for n in ranked}

        def faster_unless_clearly_worse(name: str) -> str:
            return fastest_within_noise(name, [n for n in ranked if family[n] == family[name]], transformer_calls,
                                        per_image)

        ran = []
        rechecked = recheck(ranked, recheck_error, family.get, faster_unless_clearly_worse)
        chosen = min(rechecked, key=rechecked.get)
    best = plans[chosen][1]
    best.meta["verified"] = {"calibration_error": tried, "calls": len(calls), "chosen": chosen}
    if recheck_calls:
        best.meta["verified"].update(rechecked_error=rechecked, recheck_calls=len(recheck_calls))
    return best
