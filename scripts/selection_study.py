"""How well does a tuning check on calibration inputs pick the setting that is best on evaluation inputs?

For each (steps, budget) cell, every candidate a tuned method chooses among (LayerCache: each `plan_verified`
option and each option's steps with every fixed predictor; MeanCache: γ 2 and 1; TaylorSeer: its (interval,
warm-up, order) points) is run on both calibration calls (images, per image squared error against the
uncached images, as the planner's check; files measured before the twelfth session hold the final latents'
errors) and on the evaluation seeds (per image PSNR against the uncached image). The per-image figures are written
out so that any selection rule can be scored offline (`--report`). LayerCache's candidates here are a
superset of what `plan_verified` runs (it tries the fixed predictors on its three best plans' steps only). With
--resume, the candidates already in the file are kept and only the missing ones run (after the planner's
candidates grew).

    python scripts/selection_study.py --model tiny --steps 10 --out assets/selection_study_tiny_steps10.json
    python scripts/selection_study.py --model tiny --steps 10 --out assets/selection_study_tiny_steps10.json --resume
    python scripts/selection_study.py --report assets/selection_study_*.json
    python scripts/selection_study.py --steps 30 --budgets 0.35 --out F --only "layercache allocation=steps,gamma=2.0" \
        "layercache allocation=steps,fixed=taylor+3,objective=regular,pattern=3+1"     # two candidates only
    python scripts/selection_study.py --report F --compare "layercache A" "layercache B"   # paired, per cell
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# LayerCache's plans that equal a peer's own: MeanCache's steps as velocity steps (bit for bit MeanCache) and
# TaylorSeer's patterns with the taylor predictor (its expansion on the groups' residuals)
DEFAULTS = {"velocity": lambda name: "velocity=True" in name,
            "peers": lambda name: "velocity=True" in name or ("pattern=" in name and "fixed=taylor" in name),
            # every whole-step plan with the model's predictors: what item 4's guarantee compares with
            "whole-step": lambda name: "allocation=steps" in name and "fixed=" not in name}

RULES = {   # name: (calibration calls used, per-image aggregate, standard errors, default plans); smaller is better
    "mse, call 1 (the previous check)": ((0,), "mse", 0, None),
    "log mse, call 1": ((0,), "log", 0, None),
    "mse, calls 1+2": ((0, 1), "mse", 0, None),
    "log mse, calls 1+2 (the bench's first round)": ((0, 1), "log", 0, None),
    # LayerCache keeps its best velocity-step plan (or its best plan equal to a peer's) unless another beats it by 2
    # standard errors of the paired per-image difference (not adopted: measured on the cells of the files only)
    "log mse, calls 1+2, velocity plan unless 2 SE better": ((0, 1), "log", 2, "velocity"),
    "log mse, calls 1+2, peers' plans unless 2 SE better": ((0, 1), "log", 2, "peers"),
    "log mse, calls 1+2, whole-step plans unless 2 SE better": ((0, 1), "log", 2, "whole-step"),
}


# Rules for choosing among the finalists (files measured with --finalists): (which finalists, from a method's
# candidates ranked by the calibration calls; calibration calls and recheck calls, as indices, whose images' mean
# log error then chooses among them)
def top(n):
    return lambda rows, order: order[:n]


def families(n):
    return lambda rows, order: family_best(rows, order)[:n]


def both(n):
    return lambda rows, order: list(dict.fromkeys(order[:n] + family_best(rows, order)[:n]))


RECHECK_RULES = {
    "no recheck: calls 1+2": (top(1), (0, 1), ()),
    "top 4 on calls 1-4 (the ninth session's check)": (top(4), (0, 1), (0, 1)),
    "top 4 on fresh calls 3+4 only": (top(4), (), (0, 1)),
    "top 4 on fresh calls 3-6 only": (top(4), (), (0, 1, 2, 3)),
    "top 4 on calls 1-6": (top(4), (0, 1), (0, 1, 2, 3)),
    "4 families on calls 1-4": (families(4), (0, 1), (0, 1)),
    "4 families on fresh calls 3+4 only": (families(4), (), (0, 1)),
    "4 families on fresh calls 3-6 only (the bench's check)": (families(4), (), (0, 1, 2, 3)),
    "4 families on calls 1-6": (families(4), (0, 1), (0, 1, 2, 3)),
    "top 4 and 4 families on calls 1-4": (both(4), (0, 1), (0, 1)),
    "top 4 and 4 families on fresh calls 3+4 only": (both(4), (), (0, 1)),
    "top 4 and 4 families on fresh calls 3-6 only": (both(4), (), (0, 1, 2, 3)),
    "top 2 and 2 families on fresh calls 3-6 only": (both(2), (), (0, 1, 2, 3)),
}


def ranked(cell: dict, method: str) -> list:
    """`method`'s candidates in the cell, best first by the log error on both calibration calls; LayerCache's
    limited to those `plan_verified` runs."""
    from layercache.planner import option_name, verified_options

    mine = {n: c for n, c in cell["candidates"].items() if c["method"] == method}
    if method == "layercache":
        first_round = {f"layercache {option_name(o)}" for o in verified_options(cell["steps"], cell["budget"])}
        mine = as_plan_verified(mine, (0, 1), "log", first_round)
    return sorted(mine, key=lambda n: score(mine[n], (0, 1), "log"))


def steps_of(name: str) -> tuple:
    """A LayerCache candidate's step options without its predictor choice: the first-round option it came from."""
    return tuple(sorted(kv for kv in name.removeprefix("layercache ").split(",")
                        if kv.split("=")[0] not in ("predictors", "velocity", "fixed")))


def family_best(rows: dict, names: list) -> list:
    """The best of each family, best first, from `names` ranked best first, as `planner.recheck` takes them: a
    LayerCache plan's family is the cells it computes (`computed`), a peer's `baselines.computes`."""
    from layercache.evaluation.baselines import computes

    best = {}
    for name in names:
        row, settings = rows[name], name.split(" ", 1)[1]
        best.setdefault(str(row["computed"]) if "computed" in row else computes(json.loads(settings)), name)
    return list(best.values())


def finalists(rows: dict, steps: int, budget: float, count: int) -> list:
    """Each method's `count` best candidates and the best of each of its `count` best families."""
    cell = {"steps": steps, "budget": budget, "candidates": rows}
    methods = sorted({r["method"] for r in rows.values()})
    return [n for method in methods for n in both(count)(rows, ranked(cell, method))]


def per_image(candidate: dict, calls, aggregate: str) -> np.ndarray:
    errors = np.concatenate([candidate["calibration_mse"][c] for c in calls])
    return np.log(np.maximum(errors, 1e-10)) if aggregate == "log" else errors


def score(candidate: dict, calls, aggregate: str) -> float:
    return float(per_image(candidate, calls, aggregate).mean())


def as_plan_verified(names: dict, calls, aggregate: str, first_round=None, refine: int = 3) -> dict:
    """LayerCache's candidates that `plan_verified` runs: every option of its first round (`first_round`, names;
    default: those without a fixed predictor), then the fixed predictors on the steps of the `refine` options of
    least score only."""
    options = {n: c for n, c in names.items() if ("fixed=" not in n if first_round is None else n in first_round)}
    best = [steps_of(n) for n in sorted(options, key=lambda n: score(options[n], calls, aggregate))[:refine]]
    return {n: c for n, c in names.items() if n in options or steps_of(n) in best}


def choose(names: dict, calls, aggregate: str, z: float, defaults: str = "velocity") -> dict:
    """The candidate of least score; with z > 0, the best of the default plans (`DEFAULTS[defaults]`) unless that
    one is better by z standard errors of the paired per-image difference."""
    best = min(names, key=lambda n: score(names[n], calls, aggregate))
    pool = [n for n in names if DEFAULTS[defaults](n)]
    if not z or not pool or best in pool:
        return names[best]
    default = min(pool, key=lambda n: score(names[n], calls, aggregate))
    d = per_image(names[best], calls, aggregate) - per_image(names[default], calls, aggregate)
    return names[best] if d.mean() + z * d.std(ddof=1) / np.sqrt(len(d)) < 0 else names[default]


def layercache_candidates(cal, budget) -> dict:
    from layercache.planner import FIXED_PREDICTORS, OutOfReach, option_name, plan, verified_options

    plans, seen = {}, set()
    for option in verified_options(cal.num_steps, budget):
        steps_of = {k: v for k, v in option.items() if k not in ("predictors", "velocity")}
        for variant in (option, *({**steps_of, "fixed": tuple(f)} for f in FIXED_PREDICTORS)):
            try:
                schedule = plan(cal, budget, **variant)
            except OutOfReach:
                continue
            key = schedule.actions()
            if key not in seen:
                seen.add(key)
                plans[option_name(variant)] = schedule
    return plans


def measure(args) -> list:
    import torch

    from layercache.evaluation import baselines
    from layercache.evaluation.baselines import BenchContext, prepare
    from layercache.evaluation.bench import _images
    from layercache.evaluation.metrics import psnr
    from layercache.methods import LayerCacheSetting
    from layercache.models.registry import load_pipeline, shipped_calibration
    from layercache.models.tiny.sets import calibration_calls
    from layercache.planner import reference_outputs

    def capture(ctx, points):   # the peers' tuning candidates, all of them, unselected
        ctx.captured = points
        return points[0]

    baselines.tune = capture
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    calls = calibration_calls()
    recheck = [{"label": list(range(10)), "seed": seed} for seed in args.recheck_seeds]
    seeds = list(range(100, 100 + args.images))
    measured = {(c["model"], c["steps"], c["budget"]): c["candidates"]
                for c in (json.loads(Path(args.out).read_text()) if args.resume else [])}
    cells = []
    for steps in args.steps:
        ctx = BenchContext(pipe, steps, calls, {4: shipped_calibration(args.model, steps, 4)})
        cal = ctx.calibration(4)
        reference = reference_outputs(pipe, calls, steps)
        recheck_reference = reference_outputs(pipe, recheck, steps) if args.finalists else None
        eval_reference = _images(pipe, seeds, steps)
        for budget in args.budgets:
            candidates = {f"layercache {name}": LayerCacheSetting(s, "layercache", budget)
                          for name, s in layercache_candidates(cal, budget).items()}
            for peer in ("meancache", "taylorseer"):
                prepare(peer, ctx, budget)
                candidates.update({f"{peer} {json.dumps(c.params, sort_keys=True)}": c for c in ctx.captured})
            if args.only:
                unknown = set(args.only) - set(candidates)
                if unknown:
                    sys.exit(f"--only: no such candidate at {steps} steps / {budget:g}: {sorted(unknown)}")
                candidates = {name: candidates[name] for name in args.only}
            rows = dict(measured.get((args.model, steps, budget), {}))

            def run(name, on_calls, reference_on, evaluate):
                started = time.time()
                cache = candidates[name]
                steps_run = cache.num_inference_steps or steps
                cache.attach(pipe)
                try:
                    outputs = reference_outputs(pipe, on_calls, steps_run)
                    images = _images(pipe, seeds, steps_run) if evaluate else None
                finally:
                    cache.detach(pipe)
                errors = [((a - b) ** 2).flatten(1).mean(1).tolist() for a, b in zip(outputs, reference_on)]
                scores = torch.clamp(psnr(images, eval_reference), max=100.0).tolist() if evaluate else None
                found = f"eval {np.mean(scores):.2f} dB" if evaluate else ""
                print(f"{steps} {budget:g} {name}: {found} ({time.time() - started:.1f} s)", file=sys.stderr)
                return errors, scores

            for name in candidates:
                if name in rows:   # measured by an earlier run of the same file (--resume)
                    continue
                errors, eval_psnr = run(name, calls, reference, not args.finalists)
                rows[name] = {"method": name.split(" ")[0], "calibration_mse": errors, "eval_psnr": eval_psnr}
            for name, cache in candidates.items():
                if hasattr(cache, "schedule"):   # LayerCache's: the cells it computes (its family)
                    rows[name]["computed"] = [[c.compute for c in row] for row in cache.schedule.cells]
            for name in finalists(rows, steps, budget, args.finalists) if args.finalists else ():
                if rows[name].get("recheck_mse") is None:   # the recheck calls and the evaluation seeds, finalists only
                    rows[name]["recheck_mse"], rows[name]["eval_psnr"] = run(name, recheck, recheck_reference, True)
            cells.append({"model": args.model, "steps": steps, "budget": budget, "candidates": rows})
    others = {(c["model"], c["steps"], c["budget"]) for c in cells}
    return [{"model": m, "steps": n, "budget": b, "candidates": rows}
            for (m, n, b), rows in measured.items() if (m, n, b) not in others] + cells


METHODS = ("layercache", "meancache", "taylorseer")
HEADER = "| model | steps | budget | rule | LayerCache | MeanCache | TaylorSeer | margin |"


def margin_line(cell: dict, rule: str, chosen: dict, totals: dict, extra: str = "") -> str:
    """One (cell, rule) row: each method's chosen PSNR and LayerCache's margin to the better peer (kept in totals)."""
    margin = chosen["layercache"] - max(chosen["meancache"], chosen["taylorseer"])
    totals[rule].append(margin)
    return (f"| {cell['model']} | {cell['steps']} | {cell['budget']:g} | {rule} | "
            + "".join(f"{chosen[m]:.2f} | " for m in METHODS) + f"{margin:+.2f} |{extra}")


def summary(totals: dict) -> list:
    lines = ["", "| rule | cells ≥ best peer | lost | summed margin dB |", "|---|---|---|---|"]
    for rule, margins in totals.items():
        won = sum(m >= -1e-9 for m in margins)
        lines.append(f"| {rule} | {won} | {len(margins) - won} | {sum(margins):+.2f} |")
    return lines


def report(cells: list) -> str:
    from layercache.planner import option_name, verified_options

    lines = [HEADER + " oracle LC |", "|---|---|---|---|---|---|---|---|---|"]
    totals = {rule: [] for rule in RULES}
    for cell in (c for c in cells if {r["method"] for r in c["candidates"].values()} >= set(METHODS)):
        for rule, (calls, aggregate, z, defaults) in RULES.items():
            chosen = {}
            for method in METHODS:
                mine = {n.split(" ", 1)[1]: c for n, c in cell["candidates"].items() if c["method"] == method}
                if method == "layercache":
                    first_round = {option_name(o) for o in verified_options(cell["steps"], cell["budget"])}
                    mine = as_plan_verified(mine, calls, aggregate, first_round)
                chosen[method] = float(np.mean(choose(mine, calls, aggregate, z, defaults or "velocity")["eval_psnr"]))
            oracle = max(np.mean(c["eval_psnr"]) for c in cell["candidates"].values() if c["method"] == "layercache")
            lines.append(margin_line(cell, rule, chosen, totals, f" {oracle:.2f} |"))
    return "\n".join(lines + summary(totals))


def recheck_report(cells: list) -> str:
    """Each of RECHECK_RULES applied to every tuned method alike, on the cells measured with --finalists: the
    evaluation PSNR of each method's choice and LayerCache's margin to the better peer."""
    lines = [HEADER, "|---|---|---|---|---|---|---|---|"]
    totals = {rule: [] for rule in RECHECK_RULES}
    for cell in (c for c in cells if any("recheck_mse" in r for r in c["candidates"].values())):
        rows = cell["candidates"]
        order = {method: ranked(cell, method) for method in METHODS}
        for rule, (select, calls, rechecks) in RECHECK_RULES.items():
            def final(n):
                errors = [rows[n]["calibration_mse"][i] for i in calls] + [rows[n]["recheck_mse"][i] for i in rechecks]
                return float(np.log(np.maximum(np.concatenate(errors), 1e-10)).mean())
            chosen = {m: float(np.mean(rows[min(select(rows, order[m]), key=final)]["eval_psnr"])) for m in METHODS}
            lines.append(margin_line(cell, rule, chosen, totals))
    return "\n".join(lines + summary(totals))


def scored(cells: list) -> str:
    """RULES on the cells measured on every candidate, RECHECK_RULES on those measured with --finalists."""
    rechecked = [c for c in cells if any("recheck_mse" in r for r in c["candidates"].values())]
    every = [c for c in cells if c not in rechecked]
    return "\n\n".join([*([report(every)] if every else []), *([recheck_report(rechecked)] if rechecked else [])])


def compare(cells: list, a: str, b: str) -> str:
    """Candidate b against candidate a, per cell where both were measured: the mean paired per-image difference and
    its standard error, of the check's figure on the calibration images (log squared error of the images,
    both calls; negative: b better) and of PSNR on the evaluation images (positive: b better)."""
    lines = [f"b = {b}, a = {a}", "| model | steps | budget | check b − a (± SE) | eval PSNR b − a dB (± SE) |",
             "|---|---|---|---|---|"]
    for cell in cells:
        rows = cell["candidates"]
        if a in rows and b in rows:
            found = []
            for d in (per_image(rows[b], (0, 1), "log") - per_image(rows[a], (0, 1), "log"),
                      np.subtract(rows[b]["eval_psnr"], rows[a]["eval_psnr"])):
                found.append(f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}")
            lines.append(f"| {cell['model']} | {cell['steps']} | {cell['budget']:g} | {found[0]} | {found[1]} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", default="10")
    parser.add_argument("--budgets", default="0.7,0.5,0.35,0.25,0.2")
    parser.add_argument("--images", type=int, default=20, help="evaluation seeds 100, 101, ...")
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cells and candidates already in --out; measure only what is missing")
    parser.add_argument("--report", nargs="+", help="score the rules on these files instead of measuring")
    parser.add_argument("--only", nargs="+", help="measure only these candidates (names as in the study file)")
    parser.add_argument("--finalists", type=int, default=0,
                        help="run only each method's N best candidates (on the calibration calls) on the evaluation "
                             "seeds, and on the recheck calls too (--recheck-seeds); scored by RECHECK_RULES")
    parser.add_argument("--recheck-seeds", default="3,4,5,6", help="with --finalists: one call of labels 0-9 each")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="with --report: B against A, paired")
    args = parser.parse_args()
    if args.resume and not (args.out and Path(args.out).is_file()):
        parser.error("--resume needs --out to name an existing study file")
    if args.report:
        cells = [cell for path in args.report for cell in json.loads(Path(path).read_text())]
        print(compare(cells, *args.compare) if args.compare else scored(cells))
        return
    args.recheck_seeds = [int(s) for s in args.recheck_seeds.split(",")]
    args.steps = [int(s) for s in args.steps.split(",")]
    args.budgets = [float(b) for b in args.budgets.split(",")]
    cells = measure(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(cells))
    print(compare(cells, *args.only) if args.only and len(args.only) == 2 else scored(cells))


if __name__ == "__main__":
    main()
