"""Would a final velocity rule at the recheck change a stored grid row, and what would it score?

The rule, measured in the twentieth session and not kept (docs/results_history.md): `plan_verified` would keep the
recheck's least-error finalist only where it is clearly better on the recheck images (`planner.clearly_better`, paired
per image) than the best velocity finalist (reused steps call nothing), else that velocity finalist. The
rule acts after the recheck, so a stored row's finalists (`params.rechecked`) are the ones it chooses among: each
cell's stored choice and best velocity finalist are planned again and run on the recheck calls (their mean errors must
match the stored ones: the same plans), and where the rule changes the choice, the new plan runs on the row's
evaluation seeds in the benchmark's batches and its PSNR is printed next to the stored LayerCache and best-peer
figures. Wall-clock is not timed here: rerun the row's LayerCache records for that. One JSON line per cell.

    python scripts/replay_final_velocity_rule.py --model tiny --steps 20 >> assets/family_recheck/final_rule.jsonl
"""

import json

import numpy as np
from grid_row import GridRow, row_parser
from replay_velocity_rule import parse

from layercache.planner import clearly_better, plan


def main():
    args = row_parser(__doc__.splitlines()[0]).parse_args()
    row = GridRow(args.model, args.steps)
    for record in row.layercache():
        budget, params = record["budget"], record["params"]
        stored, chosen = params["rechecked"], params["verified"]
        schedules = {name: plan(row.cal, budget, **parse(name)) for name in stored}
        velocity = sorted((n for n in stored if schedules[n].velocity_steps), key=stored.get)
        line = {"model": args.model, "steps": args.steps, "budget": budget, "stored": chosen,
                "velocity": velocity[0] if velocity else None, "chosen": chosen}
        if velocity and velocity[0] != chosen:
            mine, theirs = (row.errors(schedules[name], row.rechecks, row.recheck_reference)
                            for name in (chosen, velocity[0]))
            lead = mine - theirs
            line.update(reproduced=[round(float(mine.mean()), 4) == stored[chosen],
                                    round(float(theirs.mean()), 4) == stored[velocity[0]]],
                        lead=f"{lead.mean():+.3f} ± {lead.std(ddof=1) / np.sqrt(len(lead)):.3f}")
            if not clearly_better(mine, theirs):
                line.update(chosen=velocity[0], stored_psnr=round(record["psnr"], 2),
                            **row.scored(schedules[velocity[0]], budget))
        line["changed"] = line["chosen"] != chosen
        print(json.dumps(line), flush=True)

if __name__ == "__main__":
    main()
