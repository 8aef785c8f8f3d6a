"""Which inputs calibrate the bundled model and which evaluate it: disjoint by seed.

Calibration: every label 0-9 in one batch per seed, seeds 1 and 2. Recheck: the same, seeds 3 and 4; the benchmark's
tuned methods run their few best settings on these as well before choosing (`planner.RECHECK_FINALISTS`), so that a
choice among settings within noise of each other rests on forty images. Evaluation: one image per seed (seeds from 100
up), label = seed % 10, its noise drawn from its own seed so that evaluation images can be batched without changing
them.
"""

import torch

from .model import IMAGE_SIZE, pack

CALIBRATION_SEEDS = (1, 2)
RECHECK_SEEDS = (3, 4)
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
