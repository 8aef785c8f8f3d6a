"""Write a bundled model's shipped calibrations to assets/calibrations/.

    python -m layercache calibrate-shipped --steps 30 50 --groups 1 2 3 4 6
    python -m layercache calibrate-shipped --model tiny-flux --steps 10 20 30 50 --groups 4
"""

import time

from ...calibrate import calibrate
from ..registry import CALIBRATIONS, get_entry, load_pipeline, shipped_calibration
from .sets import calibration_calls


def run(args):
    if not get_entry(args.model).bundled:
        raise ValueError(f"{args.model!r} is a hub model: its calibrations are made on first use, not shipped")
    pipe = load_pipeline(args.model)
    CALIBRATIONS.mkdir(parents=True, exist_ok=True)
    for steps in args.steps:
        for groups in args.groups:
            t0 = time.time()
            cal = calibrate(pipe, calibration_calls(), steps, num_groups=groups)
            path = shipped_calibration(args.model, steps, groups)
            cal.save(path)
            print(f"{path.name}: {time.time() - t0:.1f}s", flush=True)

