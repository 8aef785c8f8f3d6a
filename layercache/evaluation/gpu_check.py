"""The cached sampler on CUDA with the bundled model: every cell computed is bit-identical to uncached,
and the budget-0.73 / 0.5 schedules give the same quality as on the CPU.

    python benchmarks/gpu_check.py
"""

import torch

import layercache as lc
from layercache.metrics import psnr
from layercache.models.registry import shipped_calibration
from layercache.models.tiny import TinyDigitPipeline
from layercache.models.tiny.sets import eval_call


def main():
    pipe = TinyDigitPipeline.from_weights(device="cuda")
    pipe.set_progress_bar_config(disable=True)
    cal = lc.Calibration.load(shipped_calibration("tiny", 50, 4))
    call = eval_call(range(100, 120))
    call["latents"] = call["latents"].cuda()
    reference = pipe(**call, num_inference_steps=50, output_type="pt").images
    for budget in [1.0, 0.73, 0.5]:
        lc.enable(pipe, lc.plan(cal, budget), telemetry=False)
        try:
            images = pipe(**call, num_inference_steps=50, output_type="pt").images
        finally:
            lc.disable(pipe)
        same = torch.equal(images, reference)
        print(f"cuda, budget {budget}: bit-identical={same}, mean PSNR {psnr(images, reference).mean():.2f} dB")


if __name__ == "__main__":
    main()
