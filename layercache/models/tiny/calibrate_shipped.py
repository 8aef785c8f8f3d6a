"""Write the bundled model's shipped calibrations to assets/calibrations/.

    python -m layercache calibrate-shipped --steps 30 50 --groups 1 2 3 4 6
"""

import time

from ...calibrate import calibrate
from ..registry import CALIBRATIONS, shipped_calibration
from .pipeline import TinyDigitPipeline
from .sets import calibration_calls


def run(args):
    pipe = TinyDigitPipeline.from_weights()
    CALIBRATIONS.mkdir(parents=True, exist_ok=True)
    for steps in args.steps:
        for groups in args.groups:
            t0 = time.time()
            cal = calibrate(pipe, calibration_calls(), steps, num_groups=groups)
            path = shipped_calibration("tiny", steps, groups)
            cal.save(path)
            print(f"{path.name}: {time.time() - t0:.1f}s", flush=True)

