"""LayerCache quality on the bundled model: PSNR/SSIM of final images against the uncached ones.

    python -m layercache quality [--seeds 100-119] [--budgets 0.9,0.73,0.6,0.5,0.4]

50 steps, default guidance; calibration = the shipped one (seeds 1-2, every label), evaluation seeds
from 100 (label = seed % 10): disjoint. Compares the full planner (slope and MeanCache-style
predictors, K up to 4) with plain reuse (K = 1 only), the ablation that shows what the JVP correction buys;
both plans checked end to end on the calibration calls (planner.plan_verified).
"""

from collections import Counter

import torch

from ..calibrate import Calibration
from ..methods import LayerCacheSetting
from ..models.registry import shipped_calibration
from ..models.tiny import TinyDigitPipeline
from ..models.tiny.sets import calibration_calls, eval_call
from ..planner import plan_verified, reference_outputs
from .metrics import psnr, ssim


def seed_range(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


@torch.no_grad()
def run(args):
    seeds, budgets = seed_range(args.seeds), [float(b) for b in args.budgets.split(",")]
    pipe = TinyDigitPipeline.from_weights()
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration("tiny", args.steps, args.groups))
    cal.check_fits(pipe.transformer, args.steps)
    call = eval_call(seeds)
    reference = pipe(**call, num_inference_steps=args.steps, output_type="pt").images
    calibration_reference = reference_outputs(pipe, calibration_calls(), args.steps)

    print(f"bundled model, {args.steps} steps, {args.groups} groups, {len(seeds)} evaluation images "
          f"(seeds {seeds[0]}..{seeds[-1]}), calibration seeds {[c.get('seed') for c in cal.meta['calls']]}")
    print(f"{'budget':>6} {'variant':<22} {'compute':>7} {'ideal x':>7} {'PSNR dB':>8} {'min':>6} {'SSIM':>7}  "
          f"{'allocation':<16} chosen predictor:K (reused cells)")
    for budget in budgets:
        for name, options in [("LayerCache (JVP)", {}), ("plain reuse (K=1)", {"max_k": 1})]:
            schedule = plan_verified(pipe, cal, budget, calibration_calls(), reference=calibration_reference,
                                     **options)
            cache = LayerCacheSetting(schedule)
            cache.attach(pipe)
            try:
                images = pipe(**call, num_inference_steps=args.steps, output_type="pt").images
            finally:
                cache.detach(pipe)
            p, s = psnr(images, reference), ssim(images, reference)
            chosen = Counter(c.encode() for row in schedule.cells for c in row if not c.compute)
            print(f"{budget:>6.2f} {name:<22} {schedule.compute_fraction:>7.3f} {1 / schedule.compute_fraction:>7.2f} "
                  f"{p.mean():>8.2f} {p.min():>6.1f} {s.mean():>7.4f}  {allocation(schedule.meta):<16} "
                  f"{', '.join(f'{k} ({v})' for k, v in sorted(chosen.items()))}", flush=True)


def allocation(meta: dict) -> str:
    return meta.get("verified", {}).get("chosen") or f"{meta['allocation']}, {meta['objective']}"
