"""What the bench-gpu schedules really skip, without a GPU: Qwen-Image and FLUX.1-dev built at their real
configurations on PyTorch's meta device (shapes only, no memory, no arithmetic), FLOPs counted on one step.

    python -m layercache gpu-cost-model [--measured assets/bench_gpu_h200.txt]

Per model it prints each block's FLOPs against the static weight-count proxy, then the schedules bench-gpu
plans from each cost model with the FLOP fraction they execute (1 / fraction = ideal speed-up). The H200 run
in --measured was planned with the proxy by the per-group greedy planner that the exact whole-step planner
replaced; its measured speed-ups are set against the true ideal of the very schedules it ran only with that
planner: run this file as of commit 068f801 for the README's table (`git worktree add /tmp/old 068f801`). With
today's planner the --measured column is left out (different schedules; whole-step plans execute their planned
FLOP fraction under either cost model).
"""

import re
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..groups import block_cost, find_blocks, measure_block_flops
from ..planner import plan
from . import bench_gpu


def measured_speedups(path: Path) -> dict:
    """{(model, budget): realized speed-up} from a saved bench-gpu output."""
    found, model = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("== "):
            model = line[3:].split(":")[0]
        elif match := re.match(r"budget (\S+)\s+\S+\s+\S+\s+\S+\s+(\S+)", line):
            found[model, float(match[1])] = float(match[2])
    return found


def one_step_flops(name: str, sigma: float):
    """The model on the meta device, and the FLOPs of one sampling step: per block, and outside the blocks."""
    transformer = bench_gpu.build(name)
    conds = [bench_gpu.inputs(name, transformer, None) for _ in bench_gpu.CONFIGS[name]["branches"]]
    latents = torch.empty(1, bench_gpu.IMAGE_GRID**2, transformer.config.in_channels, device="meta",
                          dtype=torch.bfloat16)
    flops, other = measure_block_flops(transformer, partial(bench_gpu.sample, name, transformer, conds, latents,
                                                            [sigma]))
    return transformer, flops, other


def run(args):
    measured = measured_speedups(args.measured) if args.measured.is_file() else {}
    budgets = [float(b) for b in args.budgets.split(",")]
    bench_gpu.DEVICE = "meta"
    sigmas = [float(s) for s in np.linspace(1.0, 1.0 / args.steps, args.steps)]
    for name in bench_gpu.CONFIGS:
        transformer, flops, other = one_step_flops(name, sigmas[0])
        total = sum(flops) + other
        print(f"\n== {name}: FLOPs per step {total / 1e12:.2f} T, outside the blocks {other / total:.2%}")
        kinds = {}
        for (block_name, block), f in zip(find_blocks(transformer), flops):
            kinds.setdefault(block_name.split(".")[0], (f, block_cost(block)))
        f0, w0 = next(iter(kinds.values()))
        for kind, (f, w) in kinds.items():
            print(f"  {kind:<26} {f / 1e12:.3f} TFLOP  relative FLOPs {f / f0:.3f}  "
                  f"relative weight count {w / w0:.3f}")
        for label, costs in (("weight-count proxy (H200 run)", None), ("measured FLOPs (bench-gpu now)", flops)):
            cal = bench_gpu.synthetic_calibration(transformer, sigmas, args.groups, costs=costs)
            shares = np.array([sum(flops[a:b]) for a, b in zip(cal.group_starts, cal.group_starts[1:] + [len(flops)])])
            shares_text = np.round(shares / sum(flops), 3).tolist()
            print(f"  {label}: group starts {cal.group_starts}, FLOP shares {shares_text}")
            for budget in budgets:
                schedule = plan(cal, budget)
                computed = np.array([[cell.compute for cell in row] for row in schedule.cells])
                fraction = ((computed * shares).sum() / len(sigmas) + other) / total
                line = (f"    budget {budget}: planned {schedule.compute_fraction:.3f}, FLOPs executed {fraction:.3f}, "
                        f"ideal speed-up {1 / fraction:.3f}")
                if costs is None and (name, budget) in measured and schedule.meta.get("allocation") != "steps":
                    realized = measured[name, budget]
                    line += f"; measured {realized:.3f}, realized / ideal {realized * fraction:.3f}"
                print(line)
