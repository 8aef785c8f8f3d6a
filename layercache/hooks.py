"""diffusers hooks that run or reuse each group of blocks, following a Schedule.

Shaped like diffusers' `hooks/first_block_cache.py`: a config dataclass, a state class kept per
`cache_context` ("cond"/"uncond"; "default" where a pipeline sets none, as SD3's does), small hooks and
one `apply_layer_cache` function. The model hook works out the step from the transformer's timestep
(no supported pipeline passes it); the first block of a group either runs it or returns its inputs plus
the predicted residual; the other blocks of a reused group pass their inputs through. A group's log holds its
last K *computed* residuals (its anchors), never predicted ones (docs/design.md, "Predictors"); under a schedule's
`reuse="outputs"` it holds the group's outputs, and a reused group returns its predicted output. On a schedule's
velocity steps the model hook calls nothing and predicts the transformer's output from its log of outputs, as
MeanCache does (docs/design.md, "Velocity steps"). On a call that reuses every group the blocks' inputs (text
embedder, rotary positions) return their last output instead of running: nothing reads them there.
"""

import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils.torch_utils import unwrap_module

from .groups import GroupLayout, find_blocks, model_id, model_spec
from .predictors import predict
from .schedule import Schedule
from .telemetry import Telemetry

_MODEL_HOOK = "layercache_model"
_BLOCK_HOOK = "layercache_block"
_INPUT_HOOK = "layercache_block_input"


@dataclass
class LayerCacheConfig:
    """schedule: what to compute and reuse. telemetry: record per-group velocity change and time (on a GPU
    the times are launch times unless you synchronize). recorder: calibration's callback, called with
    (context, step, group, residual_h, residual_e) for every computed group."""

    schedule: Schedule
    telemetry: bool = True
    recorder: Callable | None = None


class LayerCacheState(BaseState):
    def __init__(self, num_groups: int, log_length: int):
        self.num_groups, self.log_length = num_groups, log_length
        self.reset()

    def reset(self):
        self.step = -1
        self.sigma = self.sigma_next = None
        self.row = None
        self.passthrough = False
        self.stack_reused = False   # does this call reuse every group (no block runs)?
        self.block_inputs = {}      # block input module name -> its output on this generation's last run of it
        self.computing = True  # is the current group being computed (vs reused)?
        self.group_input = None
        self.reused = None     # (hidden, encoder) a reused group's first block returned
        self.started = 0.0
        self.sigmas = [deque(maxlen=self.log_length) for _ in range(self.num_groups)]
        self.steps = [deque(maxlen=self.log_length) for _ in range(self.num_groups)]
        self.residuals = [deque(maxlen=self.log_length) for _ in range(self.num_groups)]   # or outputs (`reuse`)
        self.last_residual = [None] * self.num_groups   # telemetry's velocity change where the log holds outputs
        self.output_sigmas = deque(maxlen=self.log_length)   # the transformer's outputs, for velocity steps
        self.output_steps = deque(maxlen=self.log_length)
        self.outputs = deque(maxlen=self.log_length)


class StepTracker:
    """What every whole-model hook here needs (LayerCache's and MeanCache's, by composition): the step of each call,
    found from the transformer's timestep on the schedule's sigma grid, a state reset whenever a new generation
    starts, and the "default" cache context where a pipeline sets none (SD3's batched CFG)."""

    def __init__(self, state_manager: StateManager, schedule: Schedule, timestep_per_sigma: float):
        self.state_manager = state_manager
        self.schedule = schedule
        self.timestep_per_sigma = timestep_per_sigma
        self.contexts: set = set()   # the cache contexts seen, for `states`

    def _current(self):
        try:
            return self.state_manager.context
        except ValueError:  # diffusers' StateManager raises it where no context is set
            return None

    def context_name(self) -> str:
        """The current cache context's name ("cond", "uncond", or "default" where none is set)."""
        current = self._current()
        return "default" if current is None else current.name

    @contextlib.contextmanager
    def default_context(self):
        """SD3's pipeline sets no cache context (batched CFG): use "default" for the length of the call."""
        own = self._current() is None
        if own:
            self.state_manager.set_context(CacheContext("default"))
        try:
            yield
        finally:
            if own:
                self.state_manager.set_context(None)

    def states(self) -> list:
        """The state of every cache context seen (e.g. to measure what the cache holds)."""
        previous = self._current()
        try:
            found = []
            for name in sorted(self.contexts):
                self.state_manager.set_context(CacheContext(name))
                found.append(self.state_manager.get_state())
            return found
        finally:
            self.state_manager.set_context(previous)

    def advance(self, state, args, kwargs) -> tuple[int, float]:
        """Find this call's step and sigma from its timestep; reset the state when a new generation starts."""
        self.contexts.add(self.context_name())
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[3]
        sigma = float(timestep.flatten()[0]) / self.timestep_per_sigma  # the one host sync per call
        # pipelines cast the timestep to the model dtype: in bf16 sigma is only known to ~0.4%
        precision = torch.finfo(timestep.dtype).eps if timestep.is_floating_point() else 0.0
        step = self._step_of(sigma, state.step + 1, max(1e-5, 2 * precision) * max(1.0, abs(sigma)))
        if step != state.step + 1:
            state.reset()  # a new generation, also after an exception or a cancelled run
        state.step, state.sigma = step, sigma
        return step, sigma

    def _step_of(self, sigma: float, expected: int, tolerance: float) -> int:
        sigmas = self.schedule.sigmas
        if expected < len(sigmas) and abs(sigmas[expected] - sigma) <= tolerance:
            return expected  # the step after the last one: also settles near-ties in low precision
        nearest = min(range(len(sigmas)), key=lambda i: abs(sigmas[i] - sigma))
        if abs(sigmas[nearest] - sigma) > tolerance:
            raise ValueError(
                f"the pipeline is at sigma={sigma:.6f}, which is not on the schedule's {self.schedule.num_steps}"
                f"-step sigma grid: run with num_inference_steps={self.schedule.num_steps} (and the resolution "
                f"it was calibrated at), or plan a schedule for your settings")
        return nearest


def output_velocity(output) -> torch.Tensor:
    """The velocity in a transformer's output (a tuple or a Transformer2DModelOutput)."""
    return output[0] if isinstance(output, tuple) else output.sample


def as_output(velocity: torch.Tensor, kwargs: dict):
    """A predicted velocity in the form the pipeline asked the transformer for (`return_dict`)."""
    return Transformer2DModelOutput(sample=velocity) if kwargs.get("return_dict", True) else (velocity,)


class LayerCacheModelHook(ModelHook):
    """On the transformer: finds the step from the timestep and starts a new generation when it goes back; on a
    velocity step it calls nothing and returns the velocity predicted from the log of the transformer's outputs."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, schedule: Schedule, telemetry: Telemetry, timestep_per_sigma):
        super().__init__()
        self.state_manager = state_manager
        self.schedule = schedule
        self.telemetry = telemetry
        self.steps = StepTracker(state_manager, schedule, timestep_per_sigma)
        self.velocity_steps = frozenset(schedule.velocity_steps)

    def new_forward(self, module, *args, **kwargs):
        with self.steps.default_context():
            state = self.state_manager.get_state()
            if kwargs.get("skip_layers") is not None:
                # SD3 skip-layer guidance: an extra call at the same step; run it uncached, touch no state
                state.passthrough, state.stack_reused = True, False
                try:
                    return self.fn_ref.original_forward(*args, **kwargs)
                finally:
                    state.passthrough = False
            step, sigma = self.steps.advance(state, args, kwargs)
            state.sigma_next = self.schedule.sigmas[step + 1] if step + 1 < self.schedule.num_steps else 0.0
            state.row = self.schedule.cells[step]
            state.stack_reused = not any(_computes(state, g) for g in range(len(state.row)))
            if self.telemetry.enabled:
                self.telemetry.begin_call(self.state_manager.context.name, step, sigma, state.row)
            if not self.velocity_steps:
                return self.fn_ref.original_forward(*args, **kwargs)
            if step in self.velocity_steps and state.outputs:
                cell = state.row[0]
                velocity = predict(cell.predictor, list(state.outputs), list(state.output_sigmas), sigma,
                                   state.sigma_next, cell.k, list(state.output_steps), step)
                output = as_output(velocity, kwargs)
            else:
                output = self.fn_ref.original_forward(*args, **kwargs)
                velocity = output_velocity(output)
            # predicted outputs are logged too: MeanCache's chained estimator, whose step costs plan these steps
            state.output_sigmas.append(sigma)
            state.output_steps.append(step)
            state.outputs.append(velocity)
            return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class BlockInputHook(ModelHook):
    """On a submodule whose output only the blocks read (`MODEL_SPECS`' block inputs: the text stream's embedder,
    the rotary positions): on a call that reuses every group nothing reads it, so it returns what it returned last
    in this generation instead of running. Part of the floor a reused step pays beyond its blocks (issue 10, item
    5); exact, since no block runs. Its last output stays the right value too: these inputs (the prompt's
    embeddings, the token positions) do not change between the steps of one generation."""

    def __init__(self, state_manager: StateManager, name: str):
        super().__init__()
        self.state_manager, self.name = state_manager, name

    def new_forward(self, module, *args, **kwargs):
        state = self.state_manager.get_state()
        if state.stack_reused and self.name in state.block_inputs:
            return state.block_inputs[self.name]
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.block_inputs[self.name] = output
        return output


class LayerCacheBlockHook(ModelHook):
    """On every block: the first block of a group runs it or adds the predicted residual; the rest of a
    reused group pass through; the last block of a computed group logs the group's residual."""

    def __init__(self, state_manager, group: int, is_head: bool, is_tail: bool, config: LayerCacheConfig,
                 telemetry: Telemetry):
        super().__init__()
        self.state_manager = state_manager
        self.group, self.is_head, self.is_tail = group, is_head, is_tail
        self.config, self.telemetry = config, telemetry
        self.reuses_outputs = config.schedule.reuse == "outputs"   # the log holds outputs, a reused group returns one
        self._metadata = None

    def initialize_hook(self, module):
        self._metadata = TransformerBlockRegistry.get(unwrap_module(module).__class__)
        return module

    def _inputs(self, args, kwargs):
        meta = self._metadata
        return (meta._get_parameter_from_args_kwargs("hidden_states", args, kwargs),
                meta._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs))

    def _as_output(self, hidden, encoder):
        output = [None, None]
        output[self._metadata.return_hidden_states_index] = hidden
        output[self._metadata.return_encoder_hidden_states_index] = encoder
        return tuple(output)

    def new_forward(self, module, *args, **kwargs):
        state = self.state_manager.get_state()
        if state.passthrough or state.row is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.is_head:
            hidden, encoder = self._inputs(args, kwargs)
            cell = state.row[self.group]
            state.computing = _computes(state, self.group, hidden)
            if not state.computing:
                return self._reuse(state, cell, hidden, encoder)
            state.group_input = (hidden, encoder)
            state.started = time.perf_counter()
        elif not state.computing:   # the rest of a reused group: hand on what its first block returned
            return self._as_output(*state.reused)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            self._log_computed(state, output)
        return output

    def _reuse(self, state, cell, hidden, encoder):
        g = self.group
        if self.reuses_outputs and g + 1 < len(state.row) and not _computes(state, g + 1, hidden):
            # the next group is reused too and predicts its own output: nothing reads this one's
            state.reused = (hidden, encoder)
            return self._as_output(*state.reused)
        history = list(state.residuals[g])
        where = (list(state.sigmas[g]), state.sigma, state.sigma_next, cell.k, list(state.steps[g]), state.step)
        d_hidden = predict(cell.predictor, [r[0] for r in history], *where)
        d_encoder = None
        if history[-1][1] is not None and encoder is not None and self._encoder_read_later(state):
            d_encoder = predict(cell.predictor, [r[1] for r in history], *where)
        # predictions are not logged: predictors fit computed residuals only, so an error made here is never
        # extrapolated again (and the planner's error model, which scores anchors, stays exact)
        if self.reuses_outputs:
            state.reused = (d_hidden, encoder if d_encoder is None else d_encoder)
        else:
            state.reused = (hidden + d_hidden, encoder if d_encoder is None else encoder + d_encoder)
        return self._as_output(*state.reused)

    def _encoder_read_later(self, state) -> bool:
        """Does a later group of this step compute (and so read the text stream)? After the last block every
        supported transformer drops the text stream, so where no later group computes its prediction is not made."""
        return any(_computes(state, j) for j in range(self.group + 1, len(state.row)))

    def _log_computed(self, state, output):
        g = self.group
        hidden_in, encoder_in = state.group_input
        state.group_input = None
        hidden_out = output[self._metadata.return_hidden_states_index]
        encoder_out = output[self._metadata.return_encoder_hidden_states_index]
        d_hidden = hidden_out - hidden_in
        d_encoder = None if encoder_out is None or encoder_in is None else encoder_out - encoder_in
        outputs = self.reuses_outputs
        if self.telemetry.enabled:
            record = self.telemetry.group(g)
            record.time_s += time.perf_counter() - state.started
            previous = state.last_residual[g] if outputs else (state.residuals[g] or [None])[-1]
            if previous is not None:
                record.add_change(_relative_change(previous, (d_hidden, d_encoder)))
            if outputs:   # the log holds outputs: keep the residual for the next change (one more per group)
                state.last_residual[g] = (d_hidden, d_encoder)
        if self.config.recorder is not None:
            self.config.recorder(self.state_manager.context.name, state.step, g, d_hidden, d_encoder)
        state.sigmas[g].append(state.sigma)
        state.steps[g].append(state.step)
        state.residuals[g].append((hidden_out, encoder_out) if outputs else (d_hidden, d_encoder))


def _computes(state, group: int, hidden=None) -> bool:
    """Does `group` run this step: its cell says so, or it has nothing logged to predict from (or, given the
    stream it gets, `hidden`, a log of another shape)."""
    log = state.residuals[group]
    return state.row[group].compute or not log or (hidden is not None and log[-1][0].shape != hidden.shape)


def _relative_change(previous, current) -> torch.Tensor:
    """||D(i) - D(i-1)||_1 / ||D(i-1)||_1 over both streams, as a 0-d tensor (no sync)."""
    num = den = 0
    for old, new in zip(previous, current):
        if old is not None and new is not None and old.shape == new.shape:
            num = num + (new.float() - old.float()).abs().sum()
            den = den + old.float().abs().sum()
    return num / den if torch.is_tensor(den) else torch.tensor(float("nan"))


def apply_layer_cache(transformer: torch.nn.Module, config: LayerCacheConfig) -> Telemetry:
    """Attach LayerCache to a supported transformer; returns the Telemetry that the run fills in.

    Args:
        transformer: a supported diffusers transformer (Flux, SD3, Qwen-Image) or the bundled model's.
        config: the Schedule to follow (for this model, step count and grouping), whether to record telemetry,
            and calibration's recorder.

    Example:
        >>> telemetry = apply_layer_cache(pipe.transformer, LayerCacheConfig(schedule))
        >>> image = pipe("a fox", num_inference_steps=schedule.num_steps).images[0]
        >>> remove_layer_cache(pipe.transformer)                 # the model is as it was
    """
    spec = model_spec(transformer)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_MODEL_HOOK) is not None:
        raise ValueError("LayerCache is already enabled on this transformer; disable it first")
    if getattr(transformer, "is_cache_enabled", False):
        raise ValueError("another diffusers cache is enabled on this transformer; call disable_cache() first")
    schedule = config.schedule
    blocks = find_blocks(transformer)
    schedule.check_fits(model_id(transformer), len(blocks))
    layout = GroupLayout(tuple(schedule.group_starts), schedule.num_blocks, tuple(schedule.group_costs))

    state_manager = StateManager(LayerCacheState, (layout.num_groups, max(schedule.max_k, 1)))
    telemetry = Telemetry(layout.num_groups, enabled=config.telemetry)
    velocity = set(schedule.velocity_steps)   # on these no block is called: their reuse needs no block hook
    for g in range(layout.num_groups):
        members = layout.blocks_of(g)
        reused = any(not row[g].compute for i, row in enumerate(schedule.cells) if i not in velocity)
        if not (config.telemetry or config.recorder or reused):
            continue  # a group that is always computed and unobserved needs no hooks: zero overhead
        for index in members:
            hook = LayerCacheBlockHook(state_manager, g, index == members[0], index == members[-1], config, telemetry)
            HookRegistry.check_if_exists_or_initialize(blocks[index][1]).register_hook(hook, _BLOCK_HOOK)
    if any(not any(c.compute for c in row) for i, row in enumerate(schedule.cells) if i not in velocity):
        for name in spec["block_inputs"]:   # some call reuses every group: it need not run the blocks' inputs
            module = transformer.get_submodule(name)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(BlockInputHook(state_manager, name),
                                                                             _INPUT_HOOK)
    model_hook = LayerCacheModelHook(state_manager, schedule, telemetry, spec["timestep_per_sigma"])
    registry.register_hook(model_hook, _MODEL_HOOK)
    registry.invalidate_child_registries_cache()
    return telemetry


def remove_layer_cache(transformer: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_MODEL_HOOK) is None:
        raise ValueError("LayerCache is not enabled on this transformer")
    registry.remove_hook(_MODEL_HOOK, recurse=False)
    hooked = [(block, _BLOCK_HOOK) for _, block in find_blocks(transformer)]
    hooked += [(transformer.get_submodule(name), _INPUT_HOOK) for name in model_spec(transformer)["block_inputs"]]
    for module, hook_name in hooked:   # only registries that exist: a module never hooked is left as it was
        if hasattr(module, "_diffusers_hook"):
            module._diffusers_hook.remove_hook(hook_name, recurse=False)   # a no-op where this hook is absent
    registry.invalidate_child_registries_cache()


def model_hook(transformer: torch.nn.Module) -> "LayerCacheModelHook | None":
    """LayerCache's model hook on this transformer, or None where LayerCache is not enabled."""
    return HookRegistry.check_if_exists_or_initialize(transformer).get_hook(_MODEL_HOOK)


def is_enabled(transformer: torch.nn.Module) -> bool:
    return model_hook(transformer) is not None
