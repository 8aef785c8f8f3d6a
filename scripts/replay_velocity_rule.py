"""Would the recheck's velocity-plan rule (`planner.clearly_better`, sixteenth session) change a stored grid row?

Replays the rule exactly on a grid file's LayerCache cells, without rerunning the row: each stored finalist
(`params.rechecked`) that is not a velocity plan but computes the same steps as one of `plan_verified`'s velocity
options runs against those plans on the calibration calls; where it is not clearly better, its family's best velocity
plan runs on the recheck calls in its place, and the plan of least recheck error is the one the rule chooses. The
first round is unchanged by the rule, so the stored finalists are the ones it would recheck. One JSON line per cell.

    python scripts/replay_velocity_rule.py --model tiny --steps 20 >> assets/family_recheck/velocity_rule_replay.jsonl
"""

import argparse
import json

import numpy as np

import layercache as lc
from layercache.calibrate import Calibration
from layercache.models.registry import load_pipeline, shipped_calibration
from layercache.models.tiny.sets import calibration_calls, recheck_calls
from layercache.planner import (
    OutOfReach,
    clearly_better,
    image_errors,
    option_name,
    plan,
    reference_outputs,
    verified_options,
)


def parse(name: str) -> dict:
    """`planner.option_name` read back into plan options."""
    option = {}
    for part in name.split(","):
        key, value = part.split("=")
        if key in ("fixed", "pattern"):
            first, second = value.split("+")
            option[key] = (first if key == "fixed" else int(first), int(second))
        else:
            option[key] = {"predictors": lambda v: tuple(v.split("+")), "gamma": float,
                           "velocity": lambda v: v == "True"}.get(key, str)(value)
    return option


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-flux"])
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args()
    path = f"assets/bench_grid_{'' if args.model == 'tiny' else args.model + '_'}steps{args.steps}.json"
    with open(path) as f:
        stored = {r["budget"]: r["params"] for r in json.load(f)["records"] if r["method"] == "layercache"}
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration(args.model, args.steps, 4))
    calls, rechecks = calibration_calls(), recheck_calls()
    reference = reference_outputs(pipe, calls, args.steps)
    recheck_reference = reference_outputs(pipe, rechecks, args.steps)

    def errors(schedule, on_calls, on_reference):
        lc.enable(pipe, schedule, telemetry=False)
        try:
            return image_errors(reference_outputs(pipe, on_calls, args.steps), on_reference)
        finally:
            lc.disable(pipe)

    def computes(schedule):
        return str([[cell.compute for cell in row] for row in schedule.cells])

    for budget, params in stored.items():
        velocity = {}
        for option in verified_options(args.steps, budget):
            if option.get("velocity"):
                try:
                    velocity[option_name(option)] = plan(cal, budget, **option)
                except OutOfReach:
                    pass
        rechecked, notes = dict(params["rechecked"]), []
        for name in list(rechecked):
            schedule = plan(cal, budget, **parse(name))
            siblings = {n: s for n, s in velocity.items() if computes(s) == computes(schedule)}
            if schedule.velocity_steps or not siblings:
                continue
            mine = errors(schedule, calls, reference)
            sibling, theirs = min(((n, errors(s, calls, reference)) for n, s in siblings.items()),
                                  key=lambda pair: pair[1].mean())
            lead = mine - theirs
            note = f"{name}: lead {lead.mean():+.3f} ± {lead.std(ddof=1) / np.sqrt(len(lead)):.3f} over {sibling}"
            if not clearly_better(mine, theirs):
                del rechecked[name]
                rechecked[sibling] = round(float(errors(siblings[sibling], rechecks, recheck_reference).mean()), 4)
                note += ", replaced"
            notes.append(note)
        chosen = min(rechecked, key=rechecked.get)
        print(json.dumps({"model": args.model, "steps": args.steps, "budget": budget, "stored": params["verified"],
                          "chosen": chosen, "changed": chosen != params["verified"], "families": notes,
                          "rechecked": rechecked}), flush=True)


if __name__ == "__main__":
    main()
