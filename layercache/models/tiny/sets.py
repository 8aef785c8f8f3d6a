"""Which inputs calibrate the bundled model and which evaluate it: disjoint by seed.

Calibration: every label 0-9 in one batch per seed, seeds 1 and 2. Recheck: the same, seeds 3 to 6; the benchmark's
tuned methods run their best few settings on these before choosing (`planner.recheck`), so that the choice among
settings within noise of each other rests on forty images none of them was chosen on. Evaluation: one image per
seed (seeds from 100 up), label = seed % 10, its noise drawn from its own seed so that evaluation images can be
batched without changing them.
"""

import torch

from .model import IMAGE_SIZE, pack

CALIBRATION_SEEDS = (1, 2)
RECHECK_SEEDS = (3, 4, 5, 6)
FIRST_EVAL_SEED = 100


def calibration_calls() -> list[dict]:
    return [{"label": list(range(10)), "seed": seed} for seed in CALIBRATION_SEEDS]


def recheck_calls() -> list[dict]:
    return [{"label": list(range(10)), "seed": seed} for seed in RECHECK_SEEDS]


def eval_latents(seeds) -> torch.Tensor:
    """Packed initial noise for the given evaluation seeds, one image per seed."""
    noise = [torch.randn((1, 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(int(s)))
             for s in seeds]
    return pack(torch.cat(noise))


def eval_call(seeds) -> dict:
    overlap = set(seeds) & {*CALIBRATION_SEEDS, *RECHECK_SEEDS}
    if overlap:
        raise ValueError(f"evaluation seeds {sorted(overlap)} are calibration seeds; use seeds >= {FIRST_EVAL_SEED}")
    return {"label": [int(s) % 10 for s in seeds], "latents": eval_latents(seeds)}
