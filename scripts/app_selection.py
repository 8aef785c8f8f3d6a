"""How the app's plan check chooses, scored on the evaluation seeds: each recheck variant's plan against MeanCache's.

    python scripts/app_selection.py --model tiny --cells 12/0.2,20/0.2,30/0.2
    python scripts/app_selection.py --model tiny-flux --cells 20/0.25 --recheck "none" "0,2,5,7:3" "0-9:3"
    python scripts/app_selection.py --model tiny --cells 12/0.5 --groups 1 --recheck "0-9:3"

For each (steps / budget) cell: MeanCache's plan (γ 2, the app's) and, per variant, `plan_verified` on the app's
first-round images (digits 3 and 8, calibration seed 1) with the variant's recheck images ("none", or digits:seed,
e.g. "0-9:3" = every digit with recheck seed 3), each plan run on the 20 evaluation seeds 100-119. Prints each
variant's mean PSNR, its paired margin over MeanCache ± SE, the seconds its check took and the option it chose.
This is what chose the app's recheck (`studio/workbench._recheck_calls`; docs/results_history.md, eighteenth session).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def images(spec: str) -> list:
    """"none" -> []; "0,2,5,7:3" or "0-9:3" -> one call of those digits with that seed."""
    if spec == "none":
        return []
    digits, _, seed = spec.partition(":")
    first, dash, last = digits.partition("-")
    labels = list(range(int(first), int(last) + 1)) if dash else [int(d) for d in digits.split(",")]
    return [{"label": labels, "seed": int(seed)}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--cells", default="12/0.2,20/0.2,30/0.2", help="steps/budget pairs, comma separated")
    p.add_argument("--recheck", nargs="+", default=["none", "0,2,5,7:3", "0-9:3"])
    p.add_argument("--groups", type=int, default=4, help="LayerCache's number of groups (the app's slider)")
    a = p.parse_args(argv)

    import torch

    from layercache.calibrate import Calibration, calibrate
    from layercache.evaluation.metrics import psnr
    from layercache.hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache
    from layercache.meancache import apply_meancache, meancache_schedule, remove_meancache
    from layercache.models.registry import load_pipeline, shipped_calibration
    from layercache.models.tiny.sets import calibration_calls, eval_call
    from layercache.planner import plan_verified, reference_outputs
    from layercache.studio.workbench import _verification_calls

    torch.set_num_threads(1)   # as the app runs
    pipe = load_pipeline(a.model)
    pipe.set_progress_bar_config(disable=True)
    evaluation = eval_call(list(range(100, 120)))
    first = _verification_calls(a.model)   # the app's own first-round images
    for cell in a.cells.split(","):
        steps, budget = int(cell.split("/")[0]), float(cell.split("/")[1])
        path = shipped_calibration(a.model, steps, a.groups)
        cal = (Calibration.load(path) if path.is_file() else
               calibrate(pipe, calibration_calls(), steps, num_groups=a.groups))
        reference = reference_outputs(pipe, [evaluation], steps)[0]
        first_reference = reference_outputs(pipe, first, steps)

        def score(attach, detach):
            attach()
            try:
                return psnr(reference_outputs(pipe, [evaluation], steps)[0], reference).clamp(max=100)
            finally:
                detach()

        meancache = score(lambda: apply_meancache(pipe.transformer, meancache_schedule(cal, budget, gamma=2.0)),
                          lambda: remove_meancache(pipe.transformer))
        line = [f"{a.model} {steps}/{budget:g}, {a.groups} groups: MeanCache {meancache.mean():.2f}"]
        for spec in a.recheck:
            started = time.time()
            schedule = plan_verified(pipe, cal, budget, first, reference=first_reference,
                                     recheck_calls=images(spec) or None)
            seconds = time.time() - started
            ours = score(lambda: apply_layer_cache(pipe.transformer, LayerCacheConfig(schedule, telemetry=False)),
                         lambda: remove_layer_cache(pipe.transformer))
            margin, chosen = ours - meancache, schedule.meta["verified"]["chosen"]
            line.append(f"recheck {spec}: {ours.mean():.2f} ({margin.mean():+.2f} ± "
                        f"{margin.std() / len(margin) ** 0.5:.2f}, {seconds:.0f} s, {chosen})")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
