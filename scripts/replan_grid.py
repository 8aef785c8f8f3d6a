"""Replan a stored grid row's LayerCache cells with `plan_verified` options and score the plans that change.

For each budget of the row (`assets/bench_grid_*steps{N}.json`): `plan_verified` exactly as the benchmark runs it
(the shipped calibration, both calibration calls, the recheck on seeds 3-6) with the given options; where its plan
differs from the stored one, that plan runs on the row's evaluation seeds in the benchmark's batches and its PSNR is
printed with the stored LayerCache and best-peer figures and the paired margin over the best peer, with the share of
its reused steps that still call the transformer (a velocity step calls nothing). Wall-clock is not timed: a grid
rerun (README, "LayerCache over the whole operating range") does that. One JSON line per cell.

    python scripts/replan_grid.py --model tiny --steps 10 --budgets 0.35,0.25 --hybrids alternate,late
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEERS = ("meancache", "taylorseer", "fewer-steps")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-flux"])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--budgets", help="comma separated (default: every budget of the row)")
    parser.add_argument("--hybrids", default="", help="plan_verified's hybrids, comma separated")
    args = parser.parse_args()

    import layercache as lc
    from layercache.calibrate import Calibration
    from layercache.evaluation.bench import PSNR_CAP, _images
    from layercache.evaluation.metrics import psnr
    from layercache.models.registry import load_pipeline, shipped_calibration
    from layercache.models.tiny.sets import calibration_calls, recheck_calls
    from layercache.planner import plan_verified, reference_outputs

    path = f"assets/bench_grid_{'' if args.model == 'tiny' else args.model + '_'}steps{args.steps}.json"
    with open(path) as f:
        grid = json.load(f)
    records = grid["records"]
    budgets = None if args.budgets is None else {float(b) for b in args.budgets.split(",")}
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration(args.model, args.steps, 4))
    calls, rechecks = calibration_calls(), recheck_calls()
    reference = reference_outputs(pipe, calls, args.steps)
    recheck_reference = reference_outputs(pipe, rechecks, args.steps)
    seeds, batch = grid["meta"]["seeds"], grid["meta"]["batch"]
    batches = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    evaluation_reference = [_images(pipe, b, args.steps) for b in batches]
    hybrids = tuple(h for h in args.hybrids.split(",") if h)

    for record in (r for r in records if r["method"] == "layercache" and (budgets is None or r["budget"] in budgets)):
        budget = record["budget"]
        schedule = plan_verified(pipe, cal, budget, calls, reference=reference, recheck_calls=rechecks,
                                 recheck_reference=recheck_reference, hybrids=hybrids)
        chosen = schedule.meta["verified"]["chosen"]
        line = {"model": args.model, "steps": args.steps, "budget": budget, "stored": record["params"]["verified"],
                "chosen": chosen, "changed": chosen != record["params"]["verified"],
                "rechecked": schedule.meta["verified"].get("rechecked_error")}
        if line["changed"]:
            lc.enable(pipe, schedule, telemetry=False)
            try:
                new = [min(p, PSNR_CAP) for b, ref in zip(batches, evaluation_reference)
                       for p in psnr(_images(pipe, b, args.steps), ref).tolist()]
            finally:
                lc.disable(pipe)
            reused = [i for i, row in enumerate(schedule.cells) if not any(c.compute for c in row)]
            best = max((r for r in records if r["method"] in PEERS and r["budget"] == budget),
                       key=lambda r: r["psnr"])
            margin = np.subtract(new, [i["psnr"] for i in best["per_image"]])
            line.update(psnr=round(statistics.fmean(new), 2), stored_psnr=round(record["psnr"], 2),
                        best_peer=best["method"], best_peer_psnr=round(best["psnr"], 2),
                        margin=f"{margin.mean():+.2f} ± {margin.std(ddof=1) / np.sqrt(len(margin)):.2f}",
                        calling_reused=f"{len(set(reused) - set(schedule.velocity_steps))} of {len(reused)}")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
