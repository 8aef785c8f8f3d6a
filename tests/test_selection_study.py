"""scripts/selection_study.py's offline scoring: it must pick among the candidates `plan_verified` actually runs,
with the rule it names, or the study's figures say nothing about the benchmark."""


import numpy as np
import pytest
from scripts_loader import load_script


@pytest.fixture(scope="module")
def study():
    return load_script("selection_study")


def candidate(errors, psnr=30.0):
    return {"method": "layercache", "calibration_mse": [list(errors), list(errors)], "eval_psnr": [psnr]}


def test_the_pool_is_every_option_and_fixed_predictors_on_the_three_best_options_only(study):
    names = {
        "allocation=steps,gamma=2.0": candidate([1e-3]),
        "allocation=steps,objective=outputs": candidate([1e-4]),
        "allocation=steps,objective=outputs,velocity=True": candidate([1e-5]),
        "allocation=steps,objective=uniform": candidate([1e-2]),
        "allocation=steps,fixed=slope+2,objective=outputs": candidate([1e-6]),   # steps of the 2nd and 3rd best
        "allocation=steps,fixed=slope+2,objective=uniform": candidate([1e-9]),   # steps of the worst: not run
    }
    pool = study.as_plan_verified(names, (0, 1), "log")
    assert set(pool) == set(names) - {"allocation=steps,fixed=slope+2,objective=uniform"}
    chosen = study.choose(pool, (0, 1), "log", 0)
    assert chosen is names["allocation=steps,fixed=slope+2,objective=outputs"]
    # a fixed predictor that is an option of the first round (TaylorSeer's orders on its patterns) is always run
    first_round = {n for n in names if "fixed=" not in n} | {"allocation=steps,fixed=slope+2,objective=uniform"}
    assert set(study.as_plan_verified(names, (0, 1), "log", first_round)) == set(names)


def test_the_report_scores_plan_verified_as_it_runs_now(study):
    """TaylorSeer's pattern with its order 2 throughout is a first-round option: the report never leaves it out."""
    from layercache.planner import option_name, verified_options

    names = {option_name(o) for o in verified_options(30, 0.25)}
    assert "allocation=steps,fixed=taylor+3,objective=regular,pattern=4+1" in names
    assert "allocation=steps,fixed=taylor+2,objective=regular,pattern=4+1" in names


def test_the_significance_rule_keeps_the_velocity_plan_unless_beaten_by_two_standard_errors(study):
    base = np.exp(np.linspace(-10, -6, 10))
    noisy = np.exp(np.tile([1.0, -1.2], 5))     # log differences +1, -1.2: better by 0.1 on average, SE 0.33
    velocity = candidate(base)
    slightly, clearly = candidate(base * noisy), candidate(base / 10)
    names = {"objective=outputs,velocity=True": velocity, "a": slightly}
    assert study.score(slightly, (0, 1), "log") < study.score(velocity, (0, 1), "log")
    assert study.choose(names, (0, 1), "log", 0) is slightly
    assert study.choose(names, (0, 1), "log", 2) is velocity
    assert study.choose({**names, "b": clearly}, (0, 1), "log", 2) is clearly


def test_the_peers_rule_also_defaults_to_taylorseers_pattern_with_the_taylor_predictor(study):
    base = np.exp(np.linspace(-10, -6, 10))
    noisy = np.exp(np.tile([1.0, -1.2], 5))
    peer = candidate(base)
    slightly = candidate(base * noisy)
    names = {"allocation=steps,fixed=taylor+3,objective=regular,pattern=4+1": peer, "a": slightly}
    assert study.choose(names, (0, 1), "log", 2, "velocity") is slightly   # no velocity plan among them
    assert study.choose(names, (0, 1), "log", 2, "peers") is peer


def test_compare_gives_the_paired_difference_and_its_standard_error(study):
    a = {"method": "layercache", "calibration_mse": [[np.exp(-9.0)] * 2, [np.exp(-9.0)] * 2],
         "eval_psnr": [40.0, 41.0, 42.0]}
    b = {"method": "layercache", "calibration_mse": [[np.exp(-10.0), np.exp(-8.0)], [np.exp(-9.5), np.exp(-9.5)]],
         "eval_psnr": [41.0, 41.0, 44.0]}
    cells = [{"model": "tiny", "steps": 30, "budget": 0.35, "candidates": {"layercache A": a, "layercache B": b}},
             {"model": "tiny", "steps": 50, "budget": 0.35, "candidates": {"layercache A": a}}]   # B missing: no row
    lines = study.compare(cells, "layercache A", "layercache B").splitlines()
    # check: differences -1, +1, -0.5, -0.5 -> mean -0.25, SE sqrt(0.75)/2; eval: +1, 0, +2 -> +1 ± 1/sqrt(3)
    assert lines[3:] == [f"| tiny | 30 | 0.35 | -0.250 ± {np.sqrt(0.75) / 2:.3f} | +1.000 ± {1 / np.sqrt(3):.3f} |"]


def test_the_benchs_recheck_rule_takes_the_finalists_planner_recheck_takes(study):
    """The study scores the bench's rule on the finalists `planner.recheck` runs: the best of each best family."""
    from layercache.planner import RECHECK_FINALISTS, recheck

    rows = {f"layercache option{i}": {"method": "layercache", "computed": [[i % 3 == 0], [i % 5 == 0]]}
            for i in range(12)}
    rows["meancache {\"computed_steps\": [0, 2], \"gamma\": 2.0, \"k\": [1, 2]}"] = {"method": "meancache"}
    rows["meancache {\"computed_steps\": [0, 2], \"gamma\": 1.0, \"k\": [1, 2]}"] = {"method": "meancache"}
    select = study.RECHECK_RULES["4 families on fresh calls 3-6 only (the bench's check)"][0]
    order = [n for n in rows if n.startswith("layercache")]
    assert select(rows, order) == list(recheck(order, lambda n: 0.0, lambda n: str(rows[n]["computed"])))
    assert len(select(rows, order)) == RECHECK_FINALISTS < len(order)
    peers = [n for n in rows if n.startswith("meancache")]   # the same steps: one family, as baselines.computes says
    assert select(rows, peers) == peers[:1]
