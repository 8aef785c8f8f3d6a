"""The cached sampler on CUDA with the bundled model: every cell computed is bit-identical to uncached,
and the budget-0.73 / 0.5 schedules give the same quality as on the CPU.

    python -m layercache gpu-check
"""

import torch

from ..calibrate import Calibration
from ..methods import LayerCacheSetting
from ..models.registry import shipped_calibration
from ..models.tiny import TinyDigitPipeline
from ..models.tiny.sets import eval_call
from ..planner import plan
from .metrics import psnr


def run(args=None):
    pipe = TinyDigitPipeline.from_weights(device="cuda")
    pipe.set_progress_bar_config(disable=True)
    cal = Calibration.load(shipped_calibration("tiny", 50, 4))
    call = eval_call(range(100, 120))
    call["latents"] = call["latents"].cuda()
    reference = pipe(**call, num_inference_steps=50, output_type="pt").images
    for budget in [1.0, 0.73, 0.5]:
        cache = LayerCacheSetting(plan(cal, budget))
        cache.attach(pipe)
        try:
            images = pipe(**call, num_inference_steps=50, output_type="pt").images
        finally:
            cache.detach(pipe)
        same = torch.equal(images, reference)
        print(f"cuda, budget {budget}: bit-identical={same}, mean PSNR {psnr(images, reference).mean():.2f} dB")
