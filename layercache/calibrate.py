"""Calibration: run the uncached pipeline, record every group's residual per step and CFG branch, and
turn the trajectories into the error table eps(step, group, horizon, candidate) the planner spends.

Predictors fit a group's *computed* residuals only (its anchors) and are linear in them, so the squared error
of any prediction is a quadratic form in the residuals' inner products. Calibration therefore keeps the Gram
matrix of the residuals over (group, step) pairs (mean over calibration trajectories and CFG branches): from
it the planner scores any choice of anchors exactly, in microseconds, including how the errors of groups
reused on the same step add up or cancel in the stack's output (docs/design.md, "Error model").
eps(i, g, h, c), kept for Explore, is the relative L2 error of candidate c = (predictor, K) at step i when
group g was last computed h steps earlier, anchored on its K consecutive computed residuals ending there
(teacher forcing: the anchors are the uncached run's). Residuals are compared on a fixed random subset of
their coordinates (all of them for small models); the predictors are elementwise, so the subset's errors
are those of the full tensors restricted to it.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .groups import measure_block_flops, model_id, partition
from .hooks import LayerCacheConfig, apply_layer_cache, model_hook, remove_layer_cache
from .predictors import MIN_K, PREDICTORS, weights
from .schedule import Schedule

FORMAT = "layercache.calibration"
VERSION = 3  # 2: anchored predictors, Gram matrices; 3: Gram matrices across groups


@dataclass
class Calibration:
    model_id: str
    sigmas: list            # N sigmas, one per step
    group_starts: list
    num_blocks: int
    group_costs: list
    candidates: list        # [(predictor, K)]
    errors: np.ndarray      # (N, G, H + 1, C); errors[i, g, h, c], inf where undefined
    gram: np.ndarray        # (G, G, N, N) mean inner product of group g's residual at step i and group h's at j
    velocity_change: np.ndarray  # (N, G) relative L1 change of each group's residual, NaN at step 0
    outputs: np.ndarray     # (trajectories, N, S) transformer outputs on a coordinate subset (for MeanCache;
                            # saved as float16)
    meta: dict

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    @property
    def num_groups(self) -> int:
        return len(self.group_starts)

    @property
    def group_gram(self) -> np.ndarray:
        """(G, N, N): each group's own Gram matrix over steps."""
        return np.einsum("ggij->gij", self.gram)

    @property
    def max_horizon(self) -> int:
        return self.errors.shape[2] - 1

    def stability(self) -> np.ndarray:
        """(G, C) mean one-step-horizon error of each candidate per group: lower is more stable."""
        one_step = self.errors[1:, :, 1, :]
        return np.where(np.isfinite(one_step), one_step, np.nan).mean(axis=0) if len(one_step) else one_step

    def save(self, path) -> None:
        meta = {"format": FORMAT, "version": VERSION, "model_id": self.model_id, "sigmas": self.sigmas,
                "group_starts": self.group_starts, "num_blocks": self.num_blocks, "group_costs": self.group_costs,
                "candidates": self.candidates, "meta": self.meta}
        with open(path, "wb") as f:  # np.savez would append .npz to a path without it
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), errors=self.errors, gram=self.gram,
                                velocity_change=self.velocity_change, outputs=self.outputs.astype(np.float16))

    @classmethod
    def load(cls, path) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"calibration file {path} not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in ("errors", "gram", "velocity_change", "outputs")}
                arrays["outputs"] = arrays["outputs"].astype(np.float32)  # stored as float16 to keep files small
        except Exception as err:
            raise ValueError(f"calibration file {path} is corrupt or not a calibration "
                             f"({type(err).__name__})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path} is not a version-{VERSION} LayerCache calibration: calibrate again "
                             f"(`python -m layercache calibrate`, or delete it from the app's cache folder)")
        n, g = len(meta["sigmas"]), len(meta["group_starts"])
        if arrays["errors"].shape[:2] != (n, g) or arrays["errors"].shape[3] != len(meta["candidates"]) \
                or arrays["gram"].shape != (g, g, n, n):
            raise ValueError(f"calibration file {path} is inconsistent: error table shape {arrays['errors'].shape}")
        return cls(meta["model_id"], meta["sigmas"], meta["group_starts"], meta["num_blocks"], meta["group_costs"],
                   [tuple(c) for c in meta["candidates"]], arrays["errors"], arrays["gram"], arrays["velocity_change"],
                   arrays["outputs"], meta["meta"])

    def check_fits(self, transformer, num_steps: int | None = None) -> None:
        if self.model_id != model_id(transformer):
            raise ValueError(f"calibration is for model {self.model_id}, this model is {model_id(transformer)}; "
                             f"calibrate this model")
        if num_steps is not None and num_steps != self.num_steps:
            raise ValueError(f"calibration is for {self.num_steps} steps, the run asks for {num_steps}; "
                             f"calibrate for {num_steps} steps")


class _Stop(Exception):
    pass


def sigma_grid(pipe, call: dict, num_inference_steps: int) -> list:
    """The sigmas the pipeline's scheduler uses for this call: run one step and read them off."""
    def stop(pipeline, step, timestep, kwargs):
        raise _Stop

    try:
        pipe(**call, num_inference_steps=num_inference_steps, output_type="latent", callback_on_step_end=stop)
    except _Stop:
        pass
    return [float(s) for s in pipe.scheduler.sigmas[:num_inference_steps]]


def call_kwargs(call: dict) -> dict:
    call = dict(call)
    if "seed" in call:
        call["generator"] = torch.Generator().manual_seed(int(call.pop("seed")))
    return call


def calibrate(pipe, calls: list, num_inference_steps: int, num_groups: int = 4, group_starts=None,
              max_horizon: int = 6, k_values=(1, 2, 3, 4), predictors=PREDICTORS, sample_size: int = 4096,
              output_sample_size: int = 512, progress=None) -> Calibration:
    """Run `pipe(**call)` uncached for every call, record every group's residuals and build the Gram matrices and
    the error table the planner spends.

    Args:
        pipe: a diffusers pipeline with a supported `transformer`.
        calls: dicts of pipeline arguments, one per calibration run (a "seed" becomes a generator); never the
            inputs you evaluate on.
        num_inference_steps: the step count the plans will run at.
        num_groups / group_starts: the grouping (equal compute per group, or the first block of each group).
        max_horizon: the longest horizon of the Explore error table. k_values, predictors: the candidates.
        sample_size / output_sample_size: coordinates kept per residual / per transformer output.
        progress: called as progress(done, total) after each call.

    Example:
        >>> cal = calibrate(pipe, [{"prompt": "a fox", "seed": 1}], num_inference_steps=30)
        >>> cal.save("fox_30steps.npz")
    """
    if not isinstance(calls, (list, tuple)) or not calls or not all(isinstance(c, dict) for c in calls):
        raise ValueError("calls must be a non-empty list of dicts of pipeline arguments")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps must be an integer >= 2, got {num_inference_steps!r}")
    if not all(isinstance(k, int) and k >= 1 for k in k_values) or not k_values:
        raise ValueError(f"K values must be integers >= 1, got {k_values!r}")
    if isinstance(max_horizon, bool) or not isinstance(max_horizon, int) or max_horizon < 1:
        raise ValueError(f"max_horizon must be an integer >= 1, got {max_horizon!r}")
    max_horizon = min(max_horizon, num_inference_steps - 1)   # the Explore table's horizons; plans need none
    transformer = pipe.transformer
    partition(transformer, num_groups, group_starts)  # a bad grouping fails before any model work
    # the first step, run once to read the sigmas, also measures what each block costs at these token counts
    found = {}
    flops, _ = measure_block_flops(transformer, lambda: found.setdefault(
        "sigmas", sigma_grid(pipe, call_kwargs(calls[0]), num_inference_steps)))
    sigmas, layout = found["sigmas"], partition(transformer, num_groups, group_starts, costs=flops)
    schedule = Schedule.all_compute(model_id(transformer), sigmas, layout)

    residuals: dict = {}   # (call, context, batch row) -> [step][group] -> 1-D float32 subset
    outputs: dict = {}     # (call, context, batch row) -> [step] -> 1-D float32 subset
    subsets: dict = {}
    first_size: dict = {}
    current = {"call": 0, "step": {}}

    def subset(x: torch.Tensor, key) -> torch.Tensor:
        size = x[0].numel()
        if key not in subsets:  # the same coordinates for every group and step of a stream
            gen = torch.Generator().manual_seed(len(subsets))
            limit = output_sample_size if key == "out" else sample_size
            subsets[key] = None if size <= limit else torch.randperm(size, generator=gen)[:limit]
            subsets[key, "size"] = min(size, limit)
            first_size[key] = size
        idx = subsets[key]
        if size != first_size[key]:
            # Qwen-Image's text stream is as long as each prompt (and its negative prompt): every length gets its own
            # coordinates, as many as the first one's so that trajectories stack (with repeats if it is shorter)
            count = subsets[key, "size"]
            if (key, size) not in subsets:
                gen = torch.Generator().manual_seed(size)
                subsets[key, size] = (torch.randperm(size, generator=gen)[:count] if size >= count
                                      else torch.randint(size, (count,), generator=gen))
            idx = subsets[key, size]
        flat = x.reshape(x.shape[0], -1).float()
        return (flat if idx is None else flat[:, idx.to(flat.device)]).cpu()

    def recorder(context, step, group, d_hidden, d_encoder):
        parts = [subset(d_hidden, "h")]
        if d_encoder is not None:
            parts.append(subset(d_encoder, "e"))
        elif "e" in subsets:  # SD3's last block has no text stream: zeros change no error or norm
            parts.append(torch.zeros(d_hidden.shape[0], subsets["e", "size"]))
        flat = torch.cat(parts, dim=1)
        current["step"][context] = step
        for row in range(flat.shape[0]):
            traj = residuals.setdefault((current["call"], context, row), {})
            traj.setdefault(step, [None] * layout.num_groups)[group] = flat[row]

    def record_output(module, args, kwargs, output):
        if kwargs.get("skip_layers") is not None:
            return
        context = hook.steps.context_name()
        sample = output[0] if isinstance(output, tuple) else output.sample
        flat = subset(sample, "out")
        for row in range(flat.shape[0]):
            outputs.setdefault((current["call"], context, row), []).append(flat[row])

    apply_layer_cache(transformer, LayerCacheConfig(schedule, telemetry=False, recorder=recorder))
    hook = model_hook(transformer)
    handle = transformer.register_forward_hook(record_output, with_kwargs=True)
    try:
        for index, call in enumerate(calls):
            current["call"] = index
            pipe(**call_kwargs(call), num_inference_steps=num_inference_steps, output_type="latent")
            if progress is not None:
                progress(index + 1, len(calls))
    finally:
        handle.remove()
        remove_layer_cache(transformer)

    keys = sorted(residuals)
    trajectories = torch.stack([torch.stack([torch.stack(residuals[k][i]) for i in range(num_inference_steps)])
                                for k in keys])                      # (T, N, G, S)
    candidates = [(p, k) for p in predictors for k in sorted(set(k_values)) if k >= MIN_K[p]]
    # across groups too: errors of groups reused on the same step add up (and may cancel) in the stack's output
    gram = torch.einsum("tigs,tjhs->ghij", trajectories.double(), trajectories.double()).numpy() / len(keys)
    errors = error_table(np.einsum("ggij->gij", gram), sigmas, candidates, max_horizon)
    change = (trajectories[:, 1:] - trajectories[:, :-1]).abs().sum(-1) / trajectories[:, :-1].abs().sum(-1)
    velocity = np.concatenate([np.full((1, layout.num_groups), np.nan), change.mean(0).numpy()], axis=0)
    out = np.stack([torch.stack(outputs[k]).numpy() for k in sorted(outputs)]) if outputs else np.zeros((0,))
    meta = {"num_calls": len(calls), "trajectories": len(keys), "contexts": sorted({k[1] for k in keys}),
            "sample_size": sample_size, "block_flops": flops,
            "calls": [{k: v for k, v in c.items() if isinstance(v, (int, float, str))} for c in calls]}
    return Calibration(schedule.model_id, sigmas, list(layout.starts), layout.num_blocks, list(layout.costs),
                       candidates, errors, gram, velocity, out, meta)


def prediction_weights(kind: str, k: int, anchors: list, target: int, sigmas: list) -> np.ndarray:
    """The predictor's weight on each anchor step (it is linear in them) when predicting step `target` on the
    sigma grid `sigmas`."""
    sigma_next = sigmas[target + 1] if target + 1 < len(sigmas) else 0.0   # called in loops: no grid copy
    return np.array(weights(kind, k, tuple(sigmas[a] for a in anchors), sigmas[target], sigma_next, tuple(anchors),
                            target))


def relative_error(gram: np.ndarray, anchors: list, weights: np.ndarray, target: int) -> np.ndarray:
    """Per group, ||sum_a w_a D_a - D_target|| / ||D_target|| from the Gram matrices (G, N, N)."""
    idx = list(anchors) + [target]
    coef = np.append(np.asarray(weights, dtype=float), -1.0)
    sub = gram[:, idx][:, :, idx]                                   # (G, m+1, m+1)
    squared = np.einsum("a,gab,b->g", coef, sub, coef)
    return np.sqrt(np.maximum(squared, 0.0) / np.maximum(gram[:, target, target], 1e-30))


def error_table(gram: np.ndarray, sigmas: list, candidates: list, max_horizon: int) -> np.ndarray:
    """errors[i, g, h, c]: candidate c's relative L2 error at step i, anchored on the K consecutive steps
    ending h steps earlier (fewer at the start of the run)."""
    n_steps, n_groups = gram.shape[1], gram.shape[0]
    errors = np.full((n_steps, n_groups, max_horizon + 1, len(candidates)), np.inf)
    for start in range(n_steps - 1):                              # last computed step
        for c, (kind, k) in enumerate(candidates):
            anchors = list(range(max(0, start + 1 - k), start + 1))
            for h in range(1, min(max_horizon, n_steps - 1 - start) + 1):
                i = start + h
                weights = prediction_weights(kind, k, anchors, i, sigmas)
                errors[i, :, h, c] = relative_error(gram, anchors, weights, i)
    return errors
