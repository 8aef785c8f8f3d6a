"""Run the uncached and the cached sampler side by side, in lockstep, and yield plain-data step events.

Each lane is the real pipeline `__call__` in its own thread, parked in `callback_on_step_end` after every
step until the controller says "go": step i of one lane, then step i of the other, then an event. Only one lane
runs at a time, so each lane's clock is honest (it stops while the other lane runs and
while the app draws). The cached lane has its own transformer (a deep copy, made once): cache hooks live on
the module, so two lanes cannot share one. The cache is attached for one run and detached after it, also
after a cancel, so nothing is left attached and no state carries over.

Preview: the clean-image estimate x0 = x_i - sigma_i * v_i. The callback sees x_{i+1} = x_i + (sigma_{i+1} -
sigma_i) * v_i, so x0 = x_{i+1} - sigma_{i+1} * v_i is the same number, read after the step. Pipelines that do
not hand `noise_pred` to callbacks get v_i from two consecutive latents instead (no preview at step 0).

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
        self.tensor_inputs = ["latents"] + (["noise_pred"] if "noise_pred" in pipe._callback_tensor_inputs else [])
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _wait_for_go(self):
        self.go.acquire()
        if self.cancelled.is_set():
            raise Cancelled
        self.started = time.perf_counter()

    def _on_step(self, pipe, i, t, tensors):
        self.out.put(("step", time.perf_counter() - self.started, tensors))
        self._wait_for_go()
        return {}

    def _main(self):
        try:
            self._wait_for_go()
            images = self.pipe(**self.call, output_type="pt", callback_on_step_end=self._on_step,
                               callback_on_step_end_tensor_inputs=self.tensor_inputs).images
            self.out.put(("done", time.perf_counter() - self.started, images))
        except Cancelled:
            self.out.put(("cancelled", 0.0, None))
        except BaseException as err:  # noqa: BLE001 - handed to the controller, which raises it
            self.out.put(("error", 0.0, err))

    def advance(self):
        """Let the lane run until its next step (or its end); returns (kind, payload)."""
        self.go.release()
        kind, seconds, payload = self.out.get()
        if kind == "error":
            raise payload
        self.elapsed += seconds
        return kind, payload


def _x0(lane: _Lane, step: int, tensors: dict, previous):
    sigmas = lane.pipe.scheduler.sigmas
    latents = tensors["latents"].float()
    if "noise_pred" in tensors:
        velocity = tensors["noise_pred"].float()
    elif previous is not None:
        velocity = (latents - previous) / float(sigmas[step + 1] - sigmas[step])
    else:
        return None
    return latents - float(sigmas[step + 1]) * velocity


def preview_image(pipe, x0) -> np.ndarray | None:
    """The x0 estimate as an image in [0, 1]: direct for the bundled pixel-space model; None for latent-space
    hub models (decoding with their VAE every step would cost more than the step)."""
    from ..models.tiny import TinyDigitPipeline
    from ..models.tiny.model import unpack

    if x0 is None or not isinstance(pipe, TinyDigitPipeline):
        return None
    return ((unpack(x0[:1]) + 1) / 2).clamp(0, 1)[0, 0].cpu().numpy()


def _as_numpy(images: torch.Tensor) -> np.ndarray:
    image = images[0].float().clamp(0, 1).cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def _realign(module) -> None:
    """Give the weights fresh allocations like the copy's: CPU matmul kernels round differently on weights
    that safetensors left at other alignments, and the lanes must agree bit for bit when nothing is reused."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            tensor.data = tensor.data.clone()


def twin(pipe):
    """A second pipeline sharing everything but the transformer and the (stateful) scheduler."""
    components = dict(pipe.components)
    components["transformer"] = copy.deepcopy(pipe.transformer)
    components["scheduler"] = copy.deepcopy(pipe.scheduler)
    return type(pipe)(**components)


class LockstepRunner:
    """Holds the two lanes' pipelines across runs. One run at a time: starting a run cancels the one in
    progress (a web server may drop a generator without closing it)."""

    def __init__(self, pipe):
        _realign(pipe.transformer)
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
                previous = {lane: None for lane in LANES}
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
                        previews[name] = preview_image(lane.pipe, _x0(lane, step, tensors, previous[name]))
                        previous[name] = tensors["latents"].float()
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
