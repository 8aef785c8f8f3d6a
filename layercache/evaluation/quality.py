"""LayerCache quality on the bundled model: PSNR/SSIM of final images against the uncached ones.

    python benchmarks/quality.py [--seeds 100-119] [--budgets 0.9,0.73,0.6,0.5,0.4]

50 steps, default guidance; calibration = the shipped one (seeds 1-2, every label), evaluation seeds
from 100 (label = seed % 10): disjoint. Compares the full planner (slope and MeanCache-style
predictors, K up to 4) with plain reuse (K = 1 only), the ablation that shows what the JVP correction buys;
both plans checked end to end on the calibration calls (planner.plan_verified).
"""

import argparse
from collections import Counter

import torch

import layercache as lc
from layercache.metrics import psnr, ssim
from layercache.models.registry import shipped_calibration
from layercache.models.tiny import TinyDigitPipeline
from layercache.models.tiny.sets import calibration_calls, eval_call
from layercache.planner import plan_verified, reference_latents


def seed_range(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="100-119")
    ap.add_argument("--budgets", default="0.9,0.73,0.6,0.5,0.4")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--groups", type=int, default=4)
    args = ap.parse_args()
    seeds, budgets = seed_range(args.seeds), [float(b) for b in args.budgets.split(",")]
    pipe = TinyDigitPipeline.from_weights()
    pipe.set_progress_bar_config(disable=True)
    cal = lc.Calibration.load(shipped_calibration("tiny", args.steps, args.groups))
    cal.check_fits(pipe.transformer, args.steps)
    call = eval_call(seeds)
    reference = pipe(**call, num_inference_steps=args.steps, output_type="pt").images
    calibration_reference = reference_latents(pipe, calibration_calls(), args.steps)

    print(f"bundled model, {args.steps} steps, {args.groups} groups, {len(seeds)} evaluation images "
          f"(seeds {seeds[0]}..{seeds[-1]}), calibration seeds {[c.get('seed') for c in cal.meta['calls']]}")
    print(f"{'budget':>6} {'variant':<22} {'compute':>7} {'ideal x':>7} {'PSNR dB':>8} {'min':>6} {'SSIM':>7}  "
          f"{'allocation':<16} chosen predictor:K (reused cells)")
    for budget in budgets:
        for name, options in [("LayerCache (JVP)", {}), ("plain reuse (K=1)", {"max_k": 1})]:
            schedule = plan_verified(pipe, cal, budget, calibration_calls(), reference=calibration_reference,
                                     **options)
            lc.enable(pipe, schedule, telemetry=False)
            try:
                images = pipe(**call, num_inference_steps=args.steps, output_type="pt").images
            finally:
                lc.disable(pipe)
            p, s = psnr(images, reference), ssim(images, reference)
            chosen = Counter(c.encode() for row in schedule.cells for c in row if not c.compute)
            print(f"{budget:>6.2f} {name:<22} {schedule.compute_fraction:>7.3f} {1 / schedule.compute_fraction:>7.2f} "
                  f"{p.mean():>8.2f} {p.min():>6.1f} {s.mean():>7.4f}  {allocation(schedule.meta):<16} "
                  f"{', '.join(f'{k} ({v})' for k, v in sorted(chosen.items()))}", flush=True)


def allocation(meta: dict) -> str:
    return meta.get("verified", {}).get("chosen") or f"{meta['allocation']}, {meta['objective']}"


if __name__ == "__main__":
    with torch.no_grad():
        main()
