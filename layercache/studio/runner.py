"""Run the uncached and the cached sampler side by side, in lockstep, and yield plain-data step events.

Each lane is the real pipeline `__call__` in its own thread, parked in `callback_on_step_end` after every
step until the controller says "go": step i of one lane, then step i of the other, then an event. Only one lane
runs at a time, so each lane's clock is honest (it stops while the other lane runs and
while the app draws; on a GPU it waits for the lane's queued kernels before it stops, so a step counts what it
ran, not what it launched). Both lanes share one set of weights: the cached lane's transformer is a second module
object over the very same parameter, buffer and other tensors (`shared_copy`), so it costs no weight memory, and
since cache hooks live on module objects, the cache attached to it never runs in the uncached lane. Sharing the
tensors also makes the lanes bit-identical when every cell is computed (same kernels on the same memory). The
cache is attached for one run and detached after it, also after a cancel, so nothing is left attached and no
state carries over.

Preview: the clean-image estimate x0 = x_i - sigma_i * v_i, every step. Each lane records the velocity v_i its
pipeline hands to `scheduler.step` (whatever CFG made of it); the callback sees x_{i+1} = x_i + (sigma_{i+1} -
sigma_i) * v_i, so x0 = x_{i+1} - sigma_{i+1} * v_i is the same number, read after the step (and exactly the
final latents at the last step, where sigma is 0). `preview.preview_image` turns it into an image: directly
for the bundled pixel-space model, with a linear latent-to-RGB map for the hub models' latents.

Events (plain data, numpy images in [0, 1]):
  {"kind": "step", "step", "num_steps", "sigma", "previews": {lane: HxW(x3)}, "elapsed_s": {lane: s},
   "groups": [{"computed": fraction of the group's blocks run, "predictor", "k", "velocity_change", "time_s"}]}
  {"kind": "final", ..., "images": {lane: ...}, "metrics": {"psnr", "ssim", "lpips", "lpips_reason",
   "wall_speedup", "compute_speedup", "compute_fraction"}, "method"}
"""

import contextlib
import copy
import queue
import threading
import time
from typing import Iterator

import numpy as np
import torch

from ..evaluation.metrics import BlockCounter, lpips, psnr, ssim
from ..groups import GroupLayout, partition
from .preview import preview_image

LANES = ("uncached", "cached")


# --- one lane: a pipeline call in a thread, paused after every step -----------------------------------

class Cancelled(Exception):
    pass


class _Lane:
    def __init__(self, pipe, call: dict, cancelled: threading.Event):
        self.pipe, self.call, self.cancelled = pipe, call, cancelled
        self.go = threading.Semaphore(0)
        self.out: queue.Queue = queue.Queue()
        self.elapsed = 0.0
        self.velocity = None  # v_i of the step just taken, as the pipeline handed it to the scheduler
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _wait_for_go(self):
        self.go.acquire()
        if self.cancelled.is_set():
            raise Cancelled
        self.started = time.perf_counter()

    def _seconds(self, tensor: torch.Tensor) -> float:
        if tensor.device.type != "cpu":  # kernels run asynchronously: wait for this lane's before reading the clock
            torch.accelerator.synchronize(tensor.device)
        return time.perf_counter() - self.started

    def _on_step(self, pipe, i, t, tensors):
        self.out.put(("step", self._seconds(tensors["latents"]), tensors))
        self._wait_for_go()
        return {}

    def _main(self):
        scheduler = self.pipe.scheduler
        step = scheduler.step

        def recording_step(model_output, *args, **kwargs):
            self.velocity = model_output
            return step(model_output, *args, **kwargs)

        # on this lane's scheduler for this call only (an instance attribute, removed below): pipelines hand
        # callbacks the latents but not the velocity
        scheduler.step = recording_step
        try:
            self._wait_for_go()
            images = self.pipe(**self.call, output_type="pt", callback_on_step_end=self._on_step,
                               callback_on_step_end_tensor_inputs=["latents"]).images
            self.out.put(("done", self._seconds(images), images))
        except Cancelled:
            self.out.put(("cancelled", 0.0, None))
        except BaseException as err:  # noqa: BLE001 - handed to the controller, which raises it
            self.out.put(("error", 0.0, err))
        finally:
            del scheduler.step

    def advance(self):
        """Let the lane run until its next step (or its end); returns (kind, payload)."""
        self.go.release()
        kind, seconds, payload = self.out.get()
        if kind == "error":
            raise payload
        self.elapsed += seconds
        return kind, payload


def _x0(lane: _Lane, step: int, latents: torch.Tensor) -> torch.Tensor:
    sigma_next = float(lane.pipe.scheduler.sigmas[step + 1])
    return latents.float() - sigma_next * lane.velocity.float()


def _as_numpy(images: torch.Tensor) -> np.ndarray:
    image = images[0].float().clamp(0, 1).cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A second module object over the very same tensors: deepcopy copies the module tree (and with it the
    per-object hook tables, diffusers' and torch's), while its memo hands back every parameter, buffer and
    plain tensor attribute (Qwen-Image's rope tables) as the original object. No weight is copied."""
    tensors = [*module.parameters(), *module.buffers(),
               *(value for m in module.modules() for value in vars(m).values() if torch.is_tensor(value))]
    return copy.deepcopy(module, memo={id(t): t for t in tensors})


def twin(pipe):
    """A second pipeline sharing every component and every weight; its own transformer module object (cache
    hooks are per module object) and its own (stateful) scheduler."""
    components = dict(pipe.components)
    components["transformer"] = shared_copy(pipe.transformer)
    components["scheduler"] = copy.deepcopy(pipe.scheduler)
    return type(pipe)(**components)


class LockstepRunner:
    """Holds the two lanes' pipelines across runs. One run at a time: starting a run cancels the one in
    progress (a web server may drop a generator without closing it)."""

    def __init__(self, pipe):
        self.pipes = {"uncached": pipe, "cached": twin(pipe)}
        self._lock = threading.RLock()
        self._active: "_Run | None" = None

    @contextlib.contextmanager
    def exclusive(self):
        """Cancel the run in progress and hold the pipelines: no run starts until the block ends (calibrating,
        checking plans)."""
        self.cancel()
        with self._lock:
            yield

    def cancel(self) -> None:
        active = self._active  # no lock: a Stop must not wait for a calibration that holds it
        if active is not None:
            active.stop()

    def run(self, call: dict, seed: int, num_steps: int, method, num_groups: int = 4) -> Iterator[dict]:
        """call: pipeline arguments besides generator/steps/output, e.g. {"prompt": "7", "guidance_scale": 3};
        method: a `layercache.methods.Cache` (attached to the cached lane for this run only)."""
        with self._lock:
            self.cancel()
            transformer = self.pipes["cached"].transformer
            layout = partition(transformer, num_groups, method.group_starts)
            run = _Run(self.pipes, call, seed, num_steps, method, layout)
            self._active = run
        return run.events()


class _Run:
    def __init__(self, pipes, call, seed, num_steps, method, layout: GroupLayout):
        self.pipes, self.method, self.layout, self.num_steps = pipes, method, layout, num_steps
        self.calls = {lane: dict(call, num_inference_steps=num_steps,
                                 generator=torch.Generator().manual_seed(int(seed))) for lane in LANES}
        self.cancelled = threading.Event()
        self._stop_lock = threading.Lock()
        self.lanes: dict = {}
        self.counters: dict = {}
        self.attached = False

    def _start(self):
        self.telemetry = self.method.attach(self.pipes["cached"], telemetry=True)
        self.attached = True
        self.counters = {lane: BlockCounter(self.pipes[lane].transformer) for lane in LANES}
        self.lanes = {lane: _Lane(self.pipes[lane], self.calls[lane], self.cancelled) for lane in LANES}

    def stop(self) -> None:
        """Stops both lanes (they are parked between steps), then detaches the cache. Idempotent."""
        with self._stop_lock:
            self.cancelled.set()
            for lane in self.lanes.values():
                lane.go.release()
            for lane in self.lanes.values():
                lane.thread.join()
            for counter in self.counters.values():
                counter.close()
            self.counters = {}
            if self.attached:
                self.attached = False
                self.method.detach(self.pipes["cached"])

    def _groups(self, step: int, counts: dict) -> list[dict]:
        blocks = [self.layout.blocks_of(g) for g in range(self.layout.num_groups)]
        computed = [float(counts["cached"][list(b)].sum() / max(counts["uncached"][list(b)].sum(), 1)) for b in blocks]
        groups = [{"computed": c, "predictor": None, "k": None, "velocity_change": None, "time_s": None}
                  for c in computed]
        tel = self.telemetry
        if tel is not None and tel.steps and tel.steps[-1].step == step:
            for group, record in zip(groups, tel.steps[-1].as_event()["groups"]):
                group.update({k: record[k] for k in ("predictor", "k", "velocity_change", "time_s")})
        return groups

    def events(self) -> Iterator[dict]:
        try:
            with torch.no_grad():
                self._start()
                totals = {lane: np.zeros(self.layout.num_blocks, dtype=np.int64) for lane in LANES}
                for step in range(self.num_steps):
                    previews, counts = {}, {}
                    # alternate which lane goes first: whatever else the process does right after an event
                    # (a server sending it, a browser fetching images) then slows both lanes alike
                    for name in (LANES if step % 2 == 0 else LANES[::-1]):
                        if self.cancelled.is_set():
                            return
                        lane = self.lanes[name]
                        kind, tensors = lane.advance()
                        with self._stop_lock:  # a stop from another thread closes the counters
                            if kind != "step" or self.cancelled.is_set():
                                return
                            counts[name] = self.counters[name].take()
                        previews[name] = preview_image(lane.pipe, _x0(lane, step, tensors["latents"]), lane.call)
                        totals[name] += counts[name]
                    yield {"kind": "step", "step": step, "num_steps": self.num_steps,
                           "sigma": float(self.lanes["uncached"].pipe.scheduler.sigmas[step]),
                           "previews": previews, "elapsed_s": self._elapsed(), "groups": self._groups(step, counts)}
                images = {}
                for name in LANES:
                    kind, payload = self.lanes[name].advance()
                    if kind != "done":
                        return
                    images[name] = payload
                yield self._final(images, totals)
        finally:
            self.stop()

    def _elapsed(self) -> dict:
        return {name: lane.elapsed for name, lane in self.lanes.items()}

    def _final(self, images: dict, totals: dict) -> dict:
        ref, out = images["uncached"].float().cpu(), images["cached"].float().cpu()
        lp, reason = lpips(out, ref)
        elapsed = self._elapsed()
        fraction = float(totals["cached"].sum() / max(totals["uncached"].sum(), 1))
        metrics = {"psnr": float(psnr(out, ref)[0]), "ssim": float(ssim(out, ref)[0]),
                   "lpips": None if lp is None else float(lp[0]), "lpips_reason": reason,
                   "wall_speedup": elapsed["uncached"] / max(elapsed["cached"], 1e-9),
                   "compute_fraction": fraction, "compute_speedup": 1.0 / max(fraction, 1e-9)}
        return {"kind": "final", "num_steps": self.num_steps, "method": self.method.label, "elapsed_s": elapsed,
                "images": {"uncached": _as_numpy(ref), "cached": _as_numpy(out)}, "metrics": metrics}
