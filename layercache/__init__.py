"""LayerCache: layer-wise caching of flow-matching image Transformers (arXiv 2604.16492).

    cal = layercache.calibrate(pipe, calls, num_inference_steps=50)   # or Calibration.load(path)
    schedule = layercache.plan(cal, budget=0.73)
    telemetry = layercache.enable(pipe, schedule)
    image = pipe(...)
    layercache.disable(pipe)

The names below are loaded on first use (PEP 562), so that `python -m layercache --help` and the modules that
need none of them import neither torch nor diffusers. The layout (core here; `evaluation/`, `studio/` and
`models/` beside it) is described in docs/design.md, "Module map and data flow".
"""

import importlib
import sys
import types

_LAZY = {"Calibration": "calibrate", "calibrate": "calibrate", "LayerCacheConfig": "hooks",
         "apply_layer_cache": "hooks", "is_enabled": "hooks", "remove_layer_cache": "hooks", "plan": "planner",
         "Cell": "schedule", "Schedule": "schedule", "Telemetry": "telemetry"}

__all__ = ["Calibration", "Cell", "LayerCacheConfig", "Schedule", "Telemetry", "apply_layer_cache", "calibrate",
           "disable", "enable", "is_enabled", "plan", "remove_layer_cache"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule `layercache.calibrate` must not hide the function `layercache.calibrate` (the
        # import system sets a package attribute per submodule it loads; an eager import used to rebind it)
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _transformer(pipe):
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ValueError(f"{type(pipe).__name__} has no `transformer` component; LayerCache needs a DiT pipeline")
    return transformer


def enable(pipe, schedule, telemetry: bool = True):
    """Attach LayerCache to `pipe.transformer`; returns the Telemetry each run fills in.

    Args:
        pipe: a pipeline with a supported `transformer` (see `groups.py`).
        schedule: a `Schedule` from `plan` / `plan_verified` (or `Schedule.load`), for this model and step count.
        telemetry: record per-step, per-group events (velocity change, time); off for timing runs.

    Example:
        >>> telemetry = layercache.enable(pipe, layercache.plan(cal, 0.5))
        >>> image = pipe("a fox", num_inference_steps=cal.num_steps).images[0]
        >>> layercache.disable(pipe)
    """
    from .hooks import LayerCacheConfig, apply_layer_cache
    from .schedule import Schedule

    if not isinstance(schedule, Schedule):
        raise ValueError(f"enable() needs a layercache.Schedule (see layercache.plan), got {type(schedule).__name__}")
    return apply_layer_cache(_transformer(pipe), LayerCacheConfig(schedule, telemetry=telemetry))


def disable(pipe) -> None:
    """Remove LayerCache from `pipe.transformer`: the model is exactly as before `enable`."""
    from .hooks import remove_layer_cache

    remove_layer_cache(_transformer(pipe))
