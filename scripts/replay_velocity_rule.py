"""Would the recheck's velocity-plan rule (`planner.clearly_better`, sixteenth session) change a stored grid row?

Replays the rule exactly on a grid file's LayerCache cells, without rerunning the row: each stored finalist
(`params.rechecked`) that is not a velocity plan but computes the same steps as one of `plan_verified`'s velocity
options runs against those plans on the calibration calls; where it is not clearly better, its family's best velocity
plan runs on the recheck calls in its place, and the plan of least recheck error is the one the rule chooses. The
first round is unchanged by the rule, so the stored finalists are the ones it would recheck. One JSON line per cell.

    python scripts/replay_velocity_rule.py --model tiny --steps 20 >> assets/family_recheck/velocity_rule_replay.jsonl
"""

import json

import numpy as np
from grid_row import GridRow, row_parser

from layercache.planner import OutOfReach, clearly_better, option_name, plan, verified_options


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
    args = row_parser(__doc__.splitlines()[0]).parse_args()
    row = GridRow(args.model, args.steps)
    stored = {r["budget"]: r["params"] for r in row.layercache()}
    cal, calls, rechecks, errors = row.cal, row.calls, row.rechecks, row.errors

    def computes(schedule):
        return str([[cell.compute for cell in cells] for cells in schedule.cells])

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
            mine = errors(schedule, calls, row.reference)
            sibling, theirs = min(((n, errors(s, calls, row.reference)) for n, s in siblings.items()),
                                  key=lambda pair: pair[1].mean())
            lead = mine - theirs
            note = f"{name}: lead {lead.mean():+.3f} ± {lead.std(ddof=1) / np.sqrt(len(lead)):.3f} over {sibling}"
            if not clearly_better(mine, theirs):
                del rechecked[name]
                rechecked[sibling] = round(float(errors(siblings[sibling], rechecks, row.recheck_reference).mean()), 4)
                note += ", replaced"
            notes.append(note)
        chosen = min(rechecked, key=rechecked.get)
        print(json.dumps({"model": args.model, "steps": args.steps, "budget": budget, "stored": params["verified"],
                          "chosen": chosen, "changed": chosen != params["verified"], "families": notes,
                          "rechecked": rechecked}), flush=True)


if __name__ == "__main__":
    main()
