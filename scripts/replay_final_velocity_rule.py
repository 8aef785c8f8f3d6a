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

import argparse
import json
import statistics

import numpy as np
from replay_velocity_rule import parse

import layercache as lc
from layercache.calibrate import Calibration
from layercache.evaluation.bench import PSNR_CAP, _images
from layercache.evaluation.metrics import psnr
from layercache.models.registry import load_pipeline, shipped_calibration
from layercache.models.tiny.sets import recheck_calls
from layercache.planner import clearly_better, image_errors, plan, reference_outputs

PEERS = ("meancache", "taylorseer", "fewer-steps")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-flux"])
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args()
    path = f"assets/bench_grid_{'' if args.model == 'tiny' else args.model + '_'}steps{args.steps}.json"
    with open(path) as f:
        grid = json.load(f)
    records = grid["records"]
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration(args.model, args.steps, 4))
    rechecks = recheck_calls()
    recheck_reference = reference_outputs(pipe, rechecks, args.steps)
    seeds, batch = grid["meta"]["seeds"], grid["meta"]["batch"]
    batches = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    evaluation_reference = None

    def recheck_images(schedule):
        lc.enable(pipe, schedule, telemetry=False)
        try:
            return image_errors(reference_outputs(pipe, rechecks, args.steps), recheck_reference)
        finally:
            lc.disable(pipe)

    def evaluation_psnr(schedule) -> list:
        nonlocal evaluation_reference
        if evaluation_reference is None:
            evaluation_reference = [_images(pipe, b, args.steps) for b in batches]
        lc.enable(pipe, schedule, telemetry=False)
        try:
            return [min(p, PSNR_CAP) for b, ref in zip(batches, evaluation_reference)
                    for p in psnr(_images(pipe, b, args.steps), ref).tolist()]
        finally:
            lc.disable(pipe)

    for record in (r for r in records if r["method"] == "layercache"):
        budget, params = record["budget"], record["params"]
        stored, chosen = params["rechecked"], params["verified"]
        schedules = {name: plan(cal, budget, **parse(name)) for name in stored}
        velocity = sorted((n for n in stored if schedules[n].velocity_steps), key=stored.get)
        line = {"model": args.model, "steps": args.steps, "budget": budget, "stored": chosen,
                "velocity": velocity[0] if velocity else None, "chosen": chosen}
        if velocity and velocity[0] != chosen:
            mine, theirs = recheck_images(schedules[chosen]), recheck_images(schedules[velocity[0]])
            lead = mine - theirs
            line.update(reproduced=[round(float(mine.mean()), 4) == stored[chosen],
                                    round(float(theirs.mean()), 4) == stored[velocity[0]]],
                        lead=f"{lead.mean():+.3f} ± {lead.std(ddof=1) / np.sqrt(len(lead)):.3f}")
            if not clearly_better(mine, theirs):
                line["chosen"] = velocity[0]
                new = evaluation_psnr(schedules[velocity[0]])
                peers = [r for r in records if r["method"] in PEERS and r["budget"] == budget]
                best = max(peers, key=lambda r: r["psnr"])
                margin = np.subtract(new, [i["psnr"] for i in best["per_image"]])
                line.update(psnr=round(statistics.fmean(new), 2), stored_psnr=round(record["psnr"], 2),
                            best_peer=best["method"], best_peer_psnr=round(best["psnr"], 2),
                            margin=f"{margin.mean():+.2f} ± {margin.std(ddof=1) / np.sqrt(len(margin)):.2f}")
        line["changed"] = line["chosen"] != chosen
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
