"""Predictors against closed-form values on analytic residual trajectories."""

import pytest
import torch
from diffusers.hooks.taylorseer_cache import TaylorSeerState

from layercache.predictors import mean, predict, quadratic, slope, taylor

SIGMAS = [1.0, 0.9, 0.75, 0.6, 0.4]  # uneven steps on purpose
BASE = torch.tensor([[1.0, -2.0], [0.5, 3.0]])


def trajectory(fn, sigmas=SIGMAS):
    return [fn(s) * BASE for s in sigmas]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_constant_is_exact_for_both_predictors(k):
    log = trajectory(lambda s: 2.0)
    assert torch.allclose(slope(log, SIGMAS, 0.3, k), 2.0 * BASE)
    assert torch.allclose(mean(log, SIGMAS, 0.3, 0.2, k), 2.0 * BASE)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 9])
def test_slope_is_exact_on_linear_trajectories_for_every_k_from_2(k):
    log = trajectory(lambda s: 3.0 - 2.0 * s)
    assert torch.allclose(slope(log, SIGMAS, 0.3, k), (3.0 - 2.0 * 0.3) * BASE, atol=1e-6)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_quadratic_is_exact_on_quadratic_trajectories(k):
    fn = lambda s: 1.5 + 2.0 * s - 4.0 * s * s   # noqa: E731
    log = trajectory(fn)
    assert torch.allclose(quadratic(log, SIGMAS, 0.1, k), fn(0.1) * BASE, atol=1e-5)
    assert torch.allclose(predict("quadratic", log, SIGMAS, 0.1, 0.0, k), fn(0.1) * BASE, atol=1e-5)


def test_quadratic_with_fewer_than_three_anchors_is_the_slope():
    log = trajectory(lambda s: s * s)
    assert torch.equal(quadratic(log[:2], SIGMAS[:2], 0.3, 4), slope(log[:2], SIGMAS[:2], 0.3, 2))
    assert torch.equal(quadratic(log, SIGMAS, 0.3, 2), slope(log, SIGMAS, 0.3, 2))


def test_k1_is_plain_reuse():
    log = trajectory(lambda s: 3.0 - 2.0 * s)
    assert torch.equal(slope(log, SIGMAS, 0.3, 1), log[-1])
    assert torch.equal(mean(log, SIGMAS, 0.3, 0.2, 1), log[-1])


def test_slope_on_quadratic_matches_closed_form():
    f = lambda s: s * s  # noqa: E731
    log = trajectory(f)
    # K = 3: slope between sigma 0.75 and 0.4 is (0.16 - 0.5625) / (0.4 - 0.75) = 1.15
    expected = (0.16 + (0.3 - 0.4) * 1.15) * BASE
    assert torch.allclose(slope(log, SIGMAS, 0.3, 3), expected, atol=1e-6)
    # K = 2: slope between 0.6 and 0.4 is 1.0
    assert torch.allclose(slope(log, SIGMAS, 0.3, 2), (0.16 - 0.1) * BASE, atol=1e-6)


def test_mean_estimator_closed_form_on_linear():
    # D(s) = s; window of K = 2 points: sigma 0.6 and 0.4, now 0.3, next 0.2
    log = trajectory(lambda s: s)
    average = ((0.4 - 0.6) * 0.6 + (0.3 - 0.4) * 0.4) / (0.3 - 0.6)
    jvp = (0.6 - average) / (0.3 - 0.6)
    expected = (0.4 - (0.2 - 0.3) * jvp) * BASE
    assert torch.allclose(mean(log, SIGMAS, 0.3, 0.2, 2), expected, atol=1e-6)
    # not exact on linear trajectories, unlike the slope predictor (DESIGN.md §2)
    assert not torch.allclose(expected, 0.3 * BASE, atol=1e-3)


def test_short_log_uses_what_is_there_and_keeps_dtype():
    log = [x.to(torch.bfloat16) for x in trajectory(lambda s: 1 - s)[:2]]
    out = slope(log, SIGMAS[:2], 0.75, 4)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), 0.25 * BASE, atol=1e-2)


def test_unknown_predictor_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown predictor"):
        predict("cubic", trajectory(lambda s: s), SIGMAS, 0.3, 0.2, 2)


STEPS = [0, 1, 5, 9, 13]   # a warm-up step, then one in four (TaylorSeer's pattern)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_taylor_is_diffusers_taylorseer(order):
    """The same factors and prediction as diffusers' TaylorSeer state fed the same computed steps."""
    log = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(len(STEPS))]
    state = TaylorSeerState(taylor_factors_dtype=torch.float32, max_order=order)
    for step, features in zip(STEPS, log):
        state.current_step = step
        state.update((features,))
    for now in (14, 16):
        state.current_step = now
        expected = state.predict()[0]
        assert torch.allclose(taylor(log, STEPS, now, order + 1), expected, atol=1e-5)
        # a log no longer than K anchors gives the same (the factors of order j use the last j + 1 anchors)
        assert torch.allclose(predict("taylor", log[-(order + 1):], SIGMAS, 0.3, 0.2, order + 1,
                                      STEPS[-(order + 1):], now), expected, atol=1e-5)


def test_taylor_is_exact_on_trajectories_linear_in_the_step_and_damped_beyond():
    linear = [(2.0 - 0.5 * s) * BASE for s in STEPS]
    for k in (2, 3, 4):
        assert torch.allclose(taylor(linear, STEPS, 17, k), (2.0 - 0.5 * 17) * BASE, atol=1e-5)
    square = [float(s * s) * BASE for s in STEPS]
    # order 2 over the last gap of 4: F1 = (169 - 81) / 4 = 22, F2 = (22 - 14) / 4 = 2, at t = 4: 169 + 88 + 16
    assert torch.allclose(taylor(square, STEPS, 17, 3), 273.0 * BASE)
    assert torch.equal(taylor(square, STEPS, 17, 1), square[-1])


def test_taylor_without_step_indices_is_a_clear_error():
    with pytest.raises(ValueError, match="step indices"):
        predict("taylor", trajectory(lambda s: s), SIGMAS, 0.3, 0.2, 3)
