"""A stored grid row (`assets/bench_grid_*steps{N}.json`) and what replaying or replanning its LayerCache cells needs:
the model, its shipped calibration, the benchmark's calibration and recheck calls with their uncached images, and the
row's evaluation images in the benchmark's batches. Shared by `replay_velocity_rule.py`,
`replay_final_velocity_rule.py` and `replan_grid.py`."""

import argparse
import json
import statistics
import sys
from functools import cached_property
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import layercache as lc  # noqa: E402
from layercache.calibrate import Calibration  # noqa: E402
from layercache.evaluation.bench import PSNR_CAP, _images  # noqa: E402
from layercache.evaluation.metrics import psnr  # noqa: E402
from layercache.models.registry import load_pipeline, shipped_calibration  # noqa: E402
from layercache.models.tiny.sets import calibration_calls, recheck_calls  # noqa: E402
from layercache.planner import image_errors, reference_outputs  # noqa: E402

PEERS = ("meancache", "taylorseer", "fewer-steps")


def row_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-flux"])
    parser.add_argument("--steps", type=int, required=True)
    return parser


class GridRow:
    """One model and step count's stored row; the uncached images are computed on first use, once."""

    def __init__(self, model: str, steps: int):
        with open(f"assets/bench_grid_{'' if model == 'tiny' else model + '_'}steps{steps}.json") as f:
            self.grid = json.load(f)
        self.records, self.steps = self.grid["records"], steps
        self.pipe = load_pipeline(model)
        self.pipe.set_progress_bar_config(disable=True)
        self.cal = Calibration.load(shipped_calibration(model, steps, 4))
        self.calls, self.rechecks = calibration_calls(), recheck_calls()
        seeds, batch = self.grid["meta"]["seeds"], self.grid["meta"]["batch"]
        self.batches = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]

    def layercache(self) -> list:
        return [r for r in self.records if r["method"] == "layercache"]

    def best_peer(self, budget: float) -> dict:
        return max((r for r in self.records if r["method"] in PEERS and r["budget"] == budget), key=lambda r: r["psnr"])

    @cached_property
    def reference(self) -> list:
        return reference_outputs(self.pipe, self.calls, self.steps)

    @cached_property
    def recheck_reference(self) -> list:
        return reference_outputs(self.pipe, self.rechecks, self.steps)

    @cached_property
    def evaluation_reference(self) -> list:
        return [_images(self.pipe, b, self.steps) for b in self.batches]

    def errors(self, schedule, on_calls: list, on_reference: list) -> np.ndarray:
        """`schedule`'s per-image log errors (`planner.image_errors`) on `on_calls` (`on_reference` made beforehand)."""
        lc.enable(self.pipe, schedule, telemetry=False)
        try:
            return image_errors(reference_outputs(self.pipe, on_calls, self.steps), on_reference)
        finally:
            lc.disable(self.pipe)

    def scored(self, schedule, budget: float) -> dict:
        """`schedule`'s PSNR on the row's evaluation images (capped as the benchmark caps it), with the paired margin
        over the row's best peer at `budget`."""
        reference = self.evaluation_reference   # uncached: made before the hooks go on
        lc.enable(self.pipe, schedule, telemetry=False)
        try:
            new = [min(p, PSNR_CAP) for b, ref in zip(self.batches, reference)
                   for p in psnr(_images(self.pipe, b, self.steps), ref).tolist()]
        finally:
            lc.disable(self.pipe)
        best = self.best_peer(budget)
        margin = np.subtract(new, [i["psnr"] for i in best["per_image"]])
        return {"psnr": round(statistics.fmean(new), 2), "best_peer": best["method"],
                "best_peer_psnr": round(best["psnr"], 2),
                "margin": f"{margin.mean():+.2f} ± {margin.std(ddof=1) / np.sqrt(len(margin)):.2f}"}
