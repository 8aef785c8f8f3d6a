"""Find a transformer's blocks, flatten them in execution order, and cut them into contiguous groups."""

import hashlib
import json
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# Block lists in execution order, how the model's `timestep` argument relates to sigma, and the block inputs: the
# submodules whose outputs only the blocks read (the text stream's embedder, the rotary positions), which a step that
# reuses every group need not run (hooks.BlockInputHook; read off each model's forward in diffusers 0.42).
MODEL_SPECS = {
    "QwenImageTransformer2DModel": {"block_lists": ["transformer_blocks"], "timestep_per_sigma": 1.0,
                                    "block_inputs": ["txt_norm", "txt_in", "pos_embed"]},
    "FluxTransformer2DModel": {"block_lists": ["transformer_blocks", "single_transformer_blocks"],
                               "timestep_per_sigma": 1.0, "block_inputs": ["context_embedder", "pos_embed"]},
    "SD3Transformer2DModel": {"block_lists": ["transformer_blocks"], "timestep_per_sigma": 1000.0,
                              "block_inputs": ["context_embedder"]},
}


def model_spec(transformer: torch.nn.Module) -> dict:
    name = type(transformer).__name__
    if name not in MODEL_SPECS:
        raise ValueError(f"{name} is not supported; supported transformers: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def find_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, block) for every transformer block, in the order the model runs them."""
    blocks = []
    for list_name in model_spec(transformer)["block_lists"]:
        for index, block in enumerate(getattr(transformer, list_name)):
            blocks.append((f"{list_name}.{index}", block))
    return blocks


def model_id(transformer: torch.nn.Module) -> str:
    """Class name and a fingerprint of the config: calibrations and schedules are only valid for it."""
    config = json.dumps({k: v for k, v in dict(transformer.config).items() if not k.startswith("_")},
                        sort_keys=True, default=str)
    return f"{type(transformer).__name__}@{hashlib.sha1(config.encode()).hexdigest()[:12]}"


def block_cost(block: torch.nn.Module) -> int:
    """Static compute proxy, used only where no forward pass has been measured: weights of the block's Linear
    layers. It ignores token counts, so it misjudges blocks that run different weights on different tokens
    (FLUX's double blocks count 2.4x its single blocks, while their FLOPs are equal); calibrate measures."""
    return sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def measure_block_flops(transformer: torch.nn.Module, run) -> tuple[list[float], float]:
    """FLOPs each block spends while `run()` executes (torch's FlopCounterMode, at the real token counts),
    and the FLOPs of everything else it ran. The cost model of calibrations and of the GPU benchmark."""
    # the CPU's fused attention kernel has no formula in torch; it is the same work as the GPU's
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        run()
    counts = counter.get_flop_counts()
    prefix = type(transformer).__name__
    blocks = [float(sum(counts.get(f"{prefix}.{name}", {}).values())) for name, _ in find_blocks(transformer)]
    if not all(f > 0 for f in blocks):
        raise ValueError(f"no FLOPs were counted for some blocks of {prefix}: call the transformer itself (not "
                         f"wrapped in another module), so that its blocks are named {prefix}.<block list>.<index>")
    return blocks, float(sum(counts.get("Global", {}).values())) - sum(blocks)


@dataclass(frozen=True)
class GroupLayout:
    """Contiguous groups of blocks: group g runs blocks starts[g] .. starts[g+1]-1."""

    starts: tuple[int, ...]
    num_blocks: int
    costs: tuple[float, ...]  # fraction of all block compute, per group

    @property
    def num_groups(self) -> int:
        return len(self.starts)

    def blocks_of(self, group: int) -> range:
        end = self.starts[group + 1] if group + 1 < self.num_groups else self.num_blocks
        return range(self.starts[group], end)


def partition(transformer: torch.nn.Module, num_groups: int = 4, starts=None, costs=None) -> GroupLayout:
    """Cut the blocks into `num_groups` groups of about equal compute, or at explicit `starts`. `costs`: each
    block's measured FLOPs (measure_block_flops); without them, the static proxy block_cost."""
    if costs is None:
        costs = [block_cost(block) for _, block in find_blocks(transformer)]
    n = len(costs)
    if starts is None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or not 1 <= num_groups <= n:
            raise ValueError(f"number of groups must be an integer from 1 to {n} (the model's blocks), "
                             f"got {num_groups!r}")
        cumulative = torch.tensor(costs, dtype=torch.float64).cumsum(0)
        targets = [cumulative[-1] * g / num_groups for g in range(1, num_groups)]
        # each cut goes where the cumulative cost is nearest its equal share, keeping every group non-empty
        starts = [0]
        for g, target in enumerate(targets, start=1):
            best = int(torch.argmin((cumulative[:-1] - target).abs())) + 1
            lo, hi = starts[-1] + 1, n - (num_groups - g)
            starts.append(min(max(best, lo), hi))
    starts = tuple(int(s) for s in starts)
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n:
        raise ValueError(f"group starts must begin at 0, increase strictly and stay below {n}; got {list(starts)}")
    total = float(sum(costs))
    bounds = list(starts) + [n]
    group_costs = tuple(sum(costs[a:b]) / total for a, b in zip(bounds, bounds[1:]))
    return GroupLayout(starts=starts, num_blocks=n, costs=group_costs)
