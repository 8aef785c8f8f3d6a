"""Replan a stored grid row's LayerCache cells with `plan_verified` options and score the plans that change.

For each budget of the row (`assets/bench_grid_*steps{N}.json`): `plan_verified` exactly as the benchmark runs it
(the shipped calibration, both calibration calls, the recheck on seeds 3-6) with the given options; where its plan
differs from the stored one, that plan runs on the row's evaluation seeds in the benchmark's batches and its PSNR is
printed with the stored LayerCache and best-peer figures and the paired margin over the best peer, with the share of
its reused steps that still call the transformer (a velocity step calls nothing). Wall-clock is not timed: a grid
rerun (README, "LayerCache over the whole operating range") does that. One JSON line per cell.

    python scripts/replan_grid.py --model tiny --steps 10 --budgets 0.35,0.25 --hybrids none   # without hybrids
"""

import json

from grid_row import GridRow, row_parser

from layercache.planner import HYBRIDS, plan_verified


def main():
    parser = row_parser(__doc__.splitlines()[0])
    parser.add_argument("--budgets", help="comma separated (default: every budget of the row)")
    parser.add_argument("--hybrids", default=",".join(HYBRIDS),
                        help="plan_verified's hybrids, comma separated, or 'none' (default: %(default)s, as the "
                             "benchmark)")
    args = parser.parse_args()
    row = GridRow(args.model, args.steps)
    budgets = None if args.budgets is None else {float(b) for b in args.budgets.split(",")}
    hybrids = tuple(h for h in args.hybrids.split(",") if h and h != "none")

    for record in (r for r in row.layercache() if budgets is None or r["budget"] in budgets):
        budget = record["budget"]
        schedule = plan_verified(row.pipe, row.cal, budget, row.calls, reference=row.reference,
                                 recheck_calls=row.rechecks, recheck_reference=row.recheck_reference, hybrids=hybrids)
        chosen = schedule.meta["verified"]["chosen"]
        line = {"model": args.model, "steps": args.steps, "budget": budget, "stored": record["params"]["verified"],
                "chosen": chosen, "changed": chosen != record["params"]["verified"],
                "rechecked": schedule.meta["verified"].get("rechecked_error")}
        if line["changed"]:
            reused = [i for i, cells in enumerate(schedule.cells) if not any(c.compute for c in cells)]
            line.update(stored_psnr=round(record["psnr"], 2), **row.scored(schedule, budget),
                        calling_reused=f"{len(set(reused) - set(schedule.velocity_steps))} of {len(reused)}")
        print(json.dumps(line), flush=True)

if __name__ == "__main__":
    main()
