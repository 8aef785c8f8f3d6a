"""How a reused group's residual is predicted from its log (docs/design.md, "Predictors"). Pure tensor functions.

A log holds a group's last computed residuals (its anchors: predictions are never logged), oldest first, with
the sigma of each entry. Both predictors are linear in the log, compute in fp32 and return the log's dtype.
K = 1 is plain reuse.
"""

import torch

PREDICTORS = ("slope", "mean")


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


def predict(kind: str, deltas: list, sigmas: list, sigma_now: float, sigma_next: float, k: int):
    if kind == "slope":
        return slope(deltas, sigmas, sigma_now, k)
    if kind == "mean":
        return mean(deltas, sigmas, sigma_now, sigma_next, k)
    raise ValueError(f"unknown predictor {kind!r}; choose one of {PREDICTORS}")
