"""What the app keeps across requests: a runner per model, calibrations and checked plans.

The cached lane's method comes from the registry in `layercache/methods.py` (the app names methods by their
label, e.g. "LayerCache"; `methods.by_label` maps it to the registry entry); `_AppContext` is the context those
methods ask for calibrations and checked plans. The app checks only its main method ("LayerCache") end to end,
so that a new setting's first run of any other method starts at once, and tunes nothing (MeanCache's γ = 2,
FirstBlockCache's threshold from its slider).
"""

import os
import threading
from pathlib import Path

from ..methods import by_label
from ..methods import prepare as prepare_cache
from ..models.registry import get_entry
from .runner import LockstepRunner

HUB_CALIBRATION_CALLS = [{"prompt": p, "seed": s} for s, p in enumerate(
    ["a red fox in fresh snow, photograph", "an isometric city at night, neon signs", "a bowl of ramen, studio light",
     "portrait of an old fisherman, oil painting"], start=1)]


PERSISTENT = Path("/data")  # a Space's persistent storage, where it has some: kept across restarts


def cache_dir() -> Path:
    """Where calibrations made on first use are kept: LAYERCACHE_CACHE_DIR if set, else /data/layercache where a
    writable /data exists (a Space with persistent storage: calibrations survive restarts), else
    ~/.cache/layercache."""
    if os.environ.get("LAYERCACHE_CACHE_DIR"):
        return Path(os.environ["LAYERCACHE_CACHE_DIR"])
    if PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK):
        return PERSISTENT / "layercache"
    return Path.home() / ".cache" / "layercache"


class _AppContext:
    """The context of `methods.Method.prepare` for one app request (see layercache/methods.py)."""

    check_all = False
    tunes = False
    reused_call_cost = 0.0

    def __init__(self, workbench, key, steps, groups, max_k, threshold, progress):
        self.workbench, self.key, self.num_steps, self.num_groups = workbench, key, steps, groups
        self.max_k, self.threshold, self.progress = max_k, threshold, progress
        self.source = None   # where the calibration came from, if the method used one

    def calibration(self, groups):
        cal, self.source = self.workbench.calibration(self.key, self.num_steps, groups, self.progress)
        return cal

    def verified_plan(self, cal, budget, **options):
        return self.workbench.verified_plan(self.key, cal, budget, progress=self.progress, **options)

    def tune(self, caches):
        return caches[0]

    def fbc_threshold(self, budget):
        return float(self.threshold), {"threshold": float(self.threshold)}


class Workbench:
    """Loads each allow-listed model once and keeps its runner; finds or makes calibrations (shipped in assets/
    for the bundled model, else calibrated on first use and kept under `cache_dir()`); plans schedules."""

    def __init__(self):
        self.startup_only = False  # True on ZeroGPU after startup: hub models load at startup or not at all
        self.unavailable: dict = {}  # hub model key -> why it did not load at startup
        self._runners: dict = {}
        self._calibrations: dict = {}
        self._references: dict = {}
        self._plans: dict = {}
        self._lock = threading.Lock()

    def availability(self, key: str) -> tuple[bool, str]:
        """The registry's answer (`registry.availability`), unless startup already found the model unloadable or,
        startup-only, left it out."""
        from ..models.registry import availability
        if key in self._runners:
            return availability(key)
        if key in self.unavailable:
            return False, self.unavailable[key]
        if self.startup_only and not get_entry(key).bundled:
            return False, (f"{get_entry(key).label} is not served by this Space: hub models load at startup only "
                           f"(ZeroGPU); add {key!r} to serve.models in space.yaml and restart")
        return availability(key)

    def is_loaded(self, key: str) -> bool:
        return key in self._runners

    def runner(self, key: str) -> LockstepRunner:
        from ..models.registry import load_pipeline
        with self._lock:
            if key not in self._runners:
                ok, reason = self.availability(key)
                if not ok:
                    raise ValueError(reason)
                pipe = load_pipeline(key)  # allow-list, availability and safetensors checks live there
                pipe.set_progress_bar_config(disable=True)
                self._runners[key] = LockstepRunner(pipe)
            return self._runners[key]

    def cancel_all(self) -> None:
        for runner in list(self._runners.values()):
            runner.cancel()

    def calibration_source(self, key: str, steps: int, groups: int) -> tuple[str, Path]:
        """('shipped' | 'cached' | 'to calibrate', path) without loading anything."""
        from ..models.registry import shipped_calibration
        shipped = shipped_calibration(key, steps, groups)
        if shipped.is_file():
            return "shipped", shipped
        path = cache_dir() / f"{key}_steps{steps}_groups{groups}.npz"
        return ("cached" if path.is_file() else "to calibrate"), path

    def calibration(self, key: str, steps: int, groups: int, progress=None):
        """The calibration for (model, steps, groups), and where it came from."""
        from ..calibrate import Calibration, calibrate
        from ..groups import model_id
        cache_key = (key, steps, groups)
        if cache_key in self._calibrations:
            return self._calibrations[cache_key]
        runner = self.runner(key)
        source, path = self.calibration_source(key, steps, groups)
        cal = Calibration.load(path) if source != "to calibrate" else None
        if cal is None or cal.model_id != model_id(runner.pipes["uncached"].transformer):
            with runner.exclusive():  # no run may start on this pipeline meanwhile
                cal = calibrate(runner.pipes["uncached"], calibration_calls(key), steps, num_groups=groups,
                                progress=progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            cal.save(path)
            source = "calibrated now"
        self._calibrations[cache_key] = (cal, f"{source}: {path}")
        return self._calibrations[cache_key]

    def method(self, key: str, label: str, steps: int, groups: int, budget: float, max_k: int,
               threshold: float = 0.1, progress=None):
        """(the cache for the cached lane, where its calibration came from or None) for the app's method `label`."""
        method = by_label(label)
        ctx = _AppContext(self, key, steps, groups, max_k, threshold, progress)
        cache = prepare_cache(method, ctx, budget)
        return cache, ctx.source

    def plan_checked(self, key: str, steps: int, groups: int, budget: float) -> bool:
        """Has a plan for this setting been checked end to end already (in this process)?"""
        return any(memo[:4] == (key, steps, groups, float(budget)) for memo in self._plans)

    def verified_plan(self, key: str, cal, budget: float, progress=None, **options):
        """`plan_verified` on the model's calibration inputs, as the benchmark checks plans but on fewer images: the
        candidates run on `_verification_calls`, the best of the best few families again on `_recheck_calls` (the
        uncached references are computed once per model and step count); remembered per setting."""
        from ..planner import plan_verified, reference_outputs
        memo = (key, cal.num_steps, cal.num_groups, float(budget), tuple(sorted(options.items())))
        if memo not in self._plans:
            runner = self.runner(key)
            with runner.exclusive():  # no run may start on this pipeline meanwhile
                pipe, calls, again = runner.pipes["uncached"], _verification_calls(key), _recheck_calls(key)
                if (key, cal.num_steps) not in self._references:
                    self._references[key, cal.num_steps] = (reference_outputs(pipe, calls, cal.num_steps),
                                                            reference_outputs(pipe, again, cal.num_steps))
                checking = None if progress is None else (
                    lambda done, total: progress(done, total, "checking candidate plans on the calibration inputs"))
                reference, recheck_reference = self._references[key, cal.num_steps]
                self._plans[memo] = plan_verified(pipe, cal, budget, calls, reference=reference, progress=checking,
                                                  recheck_calls=again, recheck_reference=recheck_reference, **options)
        return self._plans[memo]

    def explore(self, key: str, call: dict, seed: int, steps: int, groups: int, max_k: int, progress=None):
        """One uncached run of this input, recorded: per-group velocity change and stability against K."""
        from ..calibrate import calibrate
        runner = self.runner(key)
        with runner.exclusive():
            return calibrate(runner.pipes["uncached"], [dict(call, seed=seed)], steps, num_groups=groups,
                             k_values=tuple(range(1, max_k + 1)), progress=progress)


def _verification_calls(key: str) -> list:
    """What the app runs candidate plans on: two calibration-seed digits (one prompt for hub models), so that a
    plan for a new setting is checked in seconds."""
    if get_entry(key).bundled:
        from ..models.tiny.sets import CALIBRATION_SEEDS
        return [{"label": [3, 8], "seed": CALIBRATION_SEEDS[0]}]
    return calibration_calls(key)[:1]


def _recheck_calls(key: str) -> list:
    """What the app runs the finalists on again (`planner.recheck`), never the inputs they were chosen on: ten
    recheck-seed digits (a second prompt for hub models). On two images alone the first round's winner among plans
    within noise of each other is partly luck, and at low budgets it lost to MeanCache's plan, which is among the
    candidates (`tiny` 30 / 0.2: −1.56 ± 0.55 dB on the evaluation seeds; level with this recheck, +0.10 ± 0.09).
    Four images were too few: a plan 4 dB worse came first on them (`tiny-flux` 20 / 0.25). docs/results_history.md,
    eighteenth session."""
    if get_entry(key).bundled:
        from ..models.tiny.sets import RECHECK_SEEDS
        return [{"label": list(range(10)), "seed": RECHECK_SEEDS[0]}]
    return calibration_calls(key)[1:2]


def calibration_calls(key: str) -> list:
    """What a model is calibrated on: the bundled model's calibration seeds, every digit; hub models' prompts at
    the model's default guidance, passed the way its pipeline takes it (Qwen-Image: true CFG, both branches)."""
    if get_entry(key).bundled:
        from ..models.tiny.sets import calibration_calls as tiny_calls
        return tiny_calls()
    from ..models.registry import pipeline_call
    guidance = get_entry(key).default_guidance
    return [dict(pipeline_call(key, c["prompt"], guidance), seed=c["seed"]) for c in HUB_CALIBRATION_CALLS]
