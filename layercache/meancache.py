"""MeanCache (whole model): a cached step calls no block and predicts the transformer's output with MeanCache's
estimator, u = v_last - dsigma * J, over a window of K logged outputs; the computed steps are a shortest path
over calibrated edge costs with exactly B computed steps. Our implementation (no official code was available).
LayerCache's planner also uses its output-level step costs as one of the step selections it checks. A cache method
like LayerCache (not an evaluation peer only): the app offers it and `layercache.methods` registers it.
"""

from collections import deque

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .calibrate import Calibration
from .groups import model_spec
from .hooks import StepTracker, as_output, output_velocity
from .planner import check_budget, shortest_schedule, steps_for
from .predictors import predict
from .schedule import Cell, Schedule


def output_costs(outputs: np.ndarray, sigmas: list, predictors, gamma: float = 2.0):
    """Edge costs of a shortest path over computed steps, from calibrated transformer outputs (T, N, S).

    cost[a, c] (0 <= a < c <= N; c = N is the end) is the cost of computing step a and next step c,
    predicting the steps in between from the log of outputs with one (predictor, K) of `predictors`, each
    prediction logged in turn (chained, as MeanCache does): the sum over skipped steps of the relative L1
    deviation (mean over trajectories) to the power gamma, history up to a taken from the reference.
    best[a, c] is the index in `predictors` that minimizes it; cost[a, a+1] = 0.
    """
    out = torch.from_numpy(np.asarray(outputs, dtype=np.float32))
    n = out.shape[1]
    grid = list(sigmas) + [0.0]
    norms = out.abs().sum(-1).clamp_min(1e-12)
    cost = np.full((n, n + 1), np.inf)
    best = np.zeros((n, n + 1), dtype=int)
    for a in range(n):
        cost[a, a + 1] = 0.0
        for index, (kind, k) in enumerate(predictors):
            log = deque((out[:, j] for j in range(max(0, a + 1 - k), a + 1)), maxlen=k)
            log_sigmas = deque(grid[max(0, a + 1 - k):a + 1], maxlen=k)
            log_steps = deque(range(max(0, a + 1 - k), a + 1), maxlen=k)
            total = 0.0
            for i in range(a + 1, n):
                pred = predict(kind, list(log), list(log_sigmas), grid[i], grid[i + 1], k, list(log_steps), i)
                total += float(((pred - out[:, i]).abs().sum(-1) / norms[:, i]).mean()) ** gamma
                log.append(pred)
                log_sigmas.append(grid[i])
                log_steps.append(i)
                if total < cost[a, i + 1]:
                    cost[a, i + 1], best[a, i + 1] = total, index
    return cost, best


def meancache_costs(outputs: np.ndarray, sigmas: list, k_values=(1, 2, 3, 4), gamma: float = 2.0):
    """MeanCache's edge costs (`output_costs` with its estimator only); best_k[a, c] is the window K of least cost."""
    k_values = list(k_values)
    cost, best = output_costs(outputs, sigmas, [("mean", k) for k in k_values], gamma)
    return cost, np.asarray(k_values)[best]


def meancache_schedule(cal: Calibration, budget: float, gamma: float = 2.0, k_values=(1, 2, 3, 4)) -> Schedule:
    """MeanCache as a one-group Schedule: each step 'compute' or 'mean:K' (K = the best K of its skip)."""
    check_budget(budget)
    if cal.outputs.ndim != 3 or cal.outputs.shape[1] != cal.num_steps:
        raise ValueError("this calibration has no transformer outputs; recalibrate to run MeanCache")
    n = cal.num_steps
    cost, best_k = meancache_costs(cal.outputs, cal.sigmas, k_values, gamma)
    computed = shortest_schedule(cost, steps_for(budget, n))
    cells = [[Cell(True)] for _ in range(n)]
    for a, c in zip(computed, computed[1:] + [n]):
        for i in range(a + 1, c):
            cells[i] = [Cell(False, "mean", int(best_k[a, c]))]
    meta = {"method": "meancache", "budget": budget, "computed_steps": computed, "gamma": gamma,
            "path_cost": float(sum(cost[a, c] for a, c in zip(computed, computed[1:] + [n])))}
    return Schedule(cal.model_id, list(cal.sigmas), [0], cal.num_blocks, [1.0], cells, meta)


class MeanCacheState(BaseState):
    def __init__(self, log_length: int):
        self.log_length = log_length
        self.reset()

    def reset(self):
        self.step = -1
        self.sigmas = deque(maxlen=self.log_length)
        self.outputs = deque(maxlen=self.log_length)


class MeanCacheHook(ModelHook):
    """On the transformer: a computed step runs it and logs its output; a cached step runs nothing and
    returns MeanCache's prediction from the log of outputs (per cache context = per CFG branch). Steps are
    found from the timestep by the same `hooks.StepTracker` LayerCache's model hook uses."""

    _is_stateful = True

    def __init__(self, state_manager, schedule: Schedule, timestep_per_sigma: float):
        super().__init__()
        self.state_manager = state_manager
        self.schedule = schedule
        self.steps = StepTracker(state_manager, schedule, timestep_per_sigma)

    def reset_state(self, module):
        self.state_manager.reset()
        return module

    def new_forward(self, module, *args, **kwargs):
        with self.steps.default_context():
            if kwargs.get("skip_layers") is not None:  # SD3 skip-layer guidance: an extra call, run it as is
                return self.fn_ref.original_forward(*args, **kwargs)
            state = self.state_manager.get_state()
            step, sigma = self.steps.advance(state, args, kwargs)
            cell = self.schedule.cells[step][0]
            if cell.compute or not state.outputs:
                output = self.fn_ref.original_forward(*args, **kwargs)
                velocity = output_velocity(output)
            else:
                sigma_next = self.schedule.sigmas[step + 1] if step + 1 < self.schedule.num_steps else 0.0
                velocity = predict("mean", list(state.outputs), list(state.sigmas), sigma, sigma_next, cell.k)
                output = as_output(velocity, kwargs)
            state.sigmas.append(sigma)
            state.outputs.append(velocity)
            return output


_MEANCACHE_HOOK = "meancache"


def apply_meancache(transformer, schedule: Schedule) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_MEANCACHE_HOOK) is not None:
        raise ValueError("MeanCache is already enabled on this transformer")
    state_manager = StateManager(MeanCacheState, (max(schedule.max_k, 1),))
    hook = MeanCacheHook(state_manager, schedule, model_spec(transformer)["timestep_per_sigma"])
    registry.register_hook(hook, _MEANCACHE_HOOK)


def remove_meancache(transformer) -> None:
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_MEANCACHE_HOOK, recurse=False)
