"""How a reused group's residual is predicted from its log (docs/design.md, "Predictors"). Pure tensor functions.

A log holds a group's last computed residuals (its anchors: predictions are never logged), oldest first, with
the sigma and the step index of each entry. Every predictor is linear in the log, computes in fp32 and returns the
log's dtype. K = 1 is plain reuse. `predict`, what the hooks call, applies the definitions below to the unit vectors
once per (predictor, K, anchors, target) and then takes one weighted sum of the log: on a reused step that is the
whole cost of a group (no solve, no per-term temporaries), which is what lets residual reuse approach its ideal
speed-up on small models (docs/design.md, "Hooks").
"""

import functools
import math

import torch

PREDICTORS = ("slope", "mean", "quadratic", "taylor")
MIN_K = {"slope": 1, "mean": 2, "quadratic": 3, "taylor": 2}   # below it a predictor is one of the others


def slope(deltas: list, sigmas: list, sigma_now: float, k: int) -> torch.Tensor:
    """JVP span-K: slope over the last K anchors (first to last), extrapolated to sigma_now.

    Exact on any trajectory linear in sigma for K >= 2.
    """
    last = deltas[-1]
    span = min(k - 1, len(deltas) - 1)
    if span <= 0:
        return last
    a, b = len(deltas) - 1, len(deltas) - 1 - span
    jvp = (last.float() - deltas[b].float()) / (sigmas[a] - sigmas[b])
    return (last.float() + (sigma_now - sigmas[a]) * jvp).to(last.dtype)


def mean(deltas: list, sigmas: list, sigma_now: float, sigma_next: float, k: int) -> torch.Tensor:
    """MeanCache's estimator applied to the residual log, over a window of the last K logged points.

    A = sum_j (s_{j+1} - s_j) D(j) / (s_now - s_a) is the realized average over the window,
    J = (D(a) - A) / (s_now - s_a), prediction D(last) - (s_next - s_now) J.
    """
    last = deltas[-1]
    span = min(k, len(deltas))
    if span <= 1:
        return last
    a = len(deltas) - span
    edges = list(sigmas[a:]) + [sigma_now]
    total = edges[-1] - edges[0]
    average = sum((edges[j + 1] - edges[j]) * deltas[a + j].float() for j in range(span)) / total
    jvp = (deltas[a].float() - average) / total
    return (last.float() - (sigma_next - sigma_now) * jvp).to(last.dtype)


def quadratic(deltas: list, sigmas: list, sigma_now: float, k: int) -> torch.Tensor:
    """Second order: the least-squares parabola in sigma through the last K anchors (K = 3: the one through
    them), evaluated at sigma_now. Exact on any trajectory quadratic in sigma; the slope where fewer than 3
    anchors exist. The order TaylorSeer uses, on the group's own computed residuals and their real sigmas."""
    span = min(k, len(deltas))
    if span < 3:
        return slope(deltas, sigmas, sigma_now, span)
    # weights = e(t)^T pinv(X): X the anchors' [1, x, x^2] design, x measured from the last anchor for conditioning
    x = torch.tensor(sigmas[-span:], dtype=torch.float64) - sigmas[-1]
    design = torch.stack([torch.ones_like(x), x, x * x], dim=1)
    t = sigma_now - sigmas[-1]
    weights = torch.tensor([1.0, t, t * t], dtype=torch.float64) @ torch.linalg.pinv(design)
    last = deltas[-1]
    return sum(float(w) * d.float() for w, d in zip(weights.tolist(), deltas[-span:])).to(last.dtype)


def taylor(deltas: list, steps: list, step_now: int, k: int) -> torch.Tensor:
    """TaylorSeer's form, order K - 1 in the step index: at each anchor the order-j factor is the change of the
    order-(j - 1) factor since the previous anchor over the steps between them (TaylorSeer's update), and the
    prediction is the truncated Taylor series sum_j F_j t^j / j!, t the steps since the last anchor. Unlike the
    parabola through the anchors its second-order term is t^2 / 2, not t (t + gap) / 2: a damped extrapolation,
    which over long gaps is often closer end to end (docs/design.md, "Predictors")."""
    span = min(k, len(deltas))
    last = deltas[-1]
    factors = []
    for m in range(len(deltas) - span, len(deltas)):
        new = [deltas[m].float()]
        for previous in factors[:k - 1]:
            new.append((new[-1] - previous) / (steps[m] - steps[m - 1]))
        factors = new
    t = step_now - steps[-1]
    return sum(f * (t ** j / math.factorial(j)) for j, f in enumerate(factors)).to(last.dtype)


def _definition(kind: str, deltas: list, sigmas: list, sigma_now: float, sigma_next: float, k: int,
                steps: list | None, step_now: int | None):
    if kind == "taylor":
        if steps is None or step_now is None:
            raise ValueError("the taylor predictor needs the anchors' step indices and the current step")
        return taylor(deltas, steps, step_now, k)
    if kind == "slope":
        return slope(deltas, sigmas, sigma_now, k)
    if kind == "mean":
        return mean(deltas, sigmas, sigma_now, sigma_next, k)
    if kind == "quadratic":
        return quadratic(deltas, sigmas, sigma_now, k)
    raise ValueError(f"unknown predictor {kind!r}; choose one of {PREDICTORS}")


@functools.lru_cache(maxsize=8192)
def weights(kind: str, k: int, sigmas: tuple, sigma_now: float, sigma_next: float, steps: tuple | None = None,
            step_now: int | None = None) -> tuple:
    """The predictor's weight on each log entry (oldest first): every predictor is linear in its log, so this is the
    definition applied to the unit vectors, in float64. Cached: a run asks for the same few weight sets over and
    over (a schedule fixes each reused cell's anchors)."""
    basis = list(torch.eye(len(sigmas), dtype=torch.float64))
    return tuple(_definition(kind, basis, list(sigmas), sigma_now, sigma_next, k,
                             None if steps is None else list(steps), step_now).tolist())


def predict(kind: str, deltas: list, sigmas: list, sigma_now: float, sigma_next: float, k: int,
            steps: list | None = None, step_now: int | None = None):
    """The prediction from a log: the weighted sum of its entries in fp32, in the log's dtype. `steps`, `step_now`:
    the anchors' step indices and the current one (the "taylor" predictor's variable)."""
    n = len(deltas)   # the log's entries, its sigmas and its steps are aligned at the newest end
    w = weights(kind, k, tuple(sigmas[-n:]), sigma_now, sigma_next, None if steps is None else tuple(steps[-n:]),
                step_now)
    terms = [(wi, d) for wi, d in zip(w, deltas) if wi != 0.0]   # e.g. the slope skips the anchors between its ends
    if not terms:
        return torch.zeros_like(deltas[-1])
    out = terms[0][1].float() * terms[0][0]
    for wi, d in terms[1:]:
        out.add_(d.float(), alpha=wi)
    return out.to(deltas[-1].dtype)
