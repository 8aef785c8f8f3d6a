"""How long the app's GPU calls may take: the `duration` each `spaces.GPU` call asks ZeroGPU for.

ZeroGPU calls a callable duration with the decorated function's own arguments, before the call. The app's calls
count their work in denoising steps and multiply by space.yaml's serve.step_seconds for the model (GPU seconds per
step, all CFG branches), plus a fixed allowance (moving weights onto the GPU, text encoders, VAE decode, figures):

- a run: both lanes' steps; its first run of a (model, steps, groups) setting with no calibration on disk also
  calibrates, on every calibration call; LayerCache's first run of a budget also checks its candidate plans end to
  end (`planner.plan_verified`: a reference run and each candidate on one call, then a reference run and the
  finalists on a second call). All of it inside the same call, so the call asks for all of it.
- the planner's schedule for the editor: the same calibration and plan check, no lanes.
- a painted schedule: both lanes; Explore: one uncached run.

The bundled model (CPU) and models without a step figure take the fixed `defaults.gpu_duration_s`. Inputs a call
will refuse also take it: the call then fails at once with its own message.
"""

from ..planner import FIXED_PREDICTORS, HYBRIDS, PEER_PATTERNS, RECHECK_FINALISTS, VERIFIED_OPTIONS, pattern_options
from .space import defaults, serve

ALLOWANCE_S = 30
# reference + candidates + TaylorSeer's regular patterns (`verified_options`) + the 3 best plans refined (each fixed
# predictor, each hybrid; `plan_verified`'s `refine`), then the recheck call's
# reference + finalists (`workbench.verified_plan`)
PLAN_CHECK_RUNS = (1 + len(VERIFIED_OPTIONS) + PEER_PATTERNS * len(pattern_options((1, 1)))
                   + 3 * (len(FIXED_PREDICTORS) + len(HYBRIDS)) + 1 + RECHECK_FINALISTS)


def _seconds(key, steps, runs) -> int:
    fallback = int(defaults()["gpu_duration_s"])
    try:
        per_step = serve()["step_seconds"].get(key)
        steps = int(steps)
    except (TypeError, ValueError):
        return fallback
    if per_step is None or steps < 1:
        return fallback
    return int(ALLOWANCE_S + runs * steps * per_step + 0.999)


def run(bench, key, steps, groups, budget, method, lanes: int = 2) -> int:
    """`run`'s duration: the two lanes, and the calibration and plan check its first run of a setting makes
    (lanes=0: the planner's schedule alone)."""
    from .workbench import calibration_calls

    runs = lanes
    try:
        steps, groups = int(steps), int(groups)
        if bench.calibration_source(key, steps, groups)[0] == "to calibrate":
            runs += len(calibration_calls(key))
        if method == "LayerCache" and not bench.plan_checked(key, steps, groups, float(budget)):
            runs += PLAN_CHECK_RUNS
    except (TypeError, ValueError):
        pass
    return _seconds(key, steps, runs)


def lanes(key, steps) -> int:
    """A painted schedule's run: the two lanes."""
    return _seconds(key, steps, 2)


def explore(key, steps) -> int:
    """Explore: one uncached run, recorded."""
    return _seconds(key, steps, 1)
