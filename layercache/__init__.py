"""LayerCache: layer-wise caching of flow-matching image Transformers (arXiv 2604.16492).

    cal = layercache.calibrate(pipe, calls, num_inference_steps=50)   # or Calibration.load(path)
    schedule = layercache.plan(cal, budget=0.73)
    telemetry = layercache.enable(pipe, schedule)
    image = pipe(...)
    layercache.disable(pipe)
"""

from .calibrate import Calibration, calibrate
from .hooks import LayerCacheConfig, apply_layer_cache, is_enabled, remove_layer_cache
from .planner import plan
from .schedule import Cell, Schedule
from .telemetry import Telemetry

__all__ = ["Calibration", "Cell", "LayerCacheConfig", "Schedule", "Telemetry", "apply_layer_cache", "calibrate",
           "disable", "enable", "is_enabled", "plan", "remove_layer_cache"]


def _transformer(pipe):
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ValueError(f"{type(pipe).__name__} has no `transformer` component; LayerCache needs a DiT pipeline")
    return transformer


def enable(pipe, schedule: Schedule, telemetry: bool = True) -> Telemetry:
    """Attach LayerCache to `pipe.transformer`; returns the Telemetry each run fills in."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"enable() needs a layercache.Schedule (see layercache.plan), got {type(schedule).__name__}")
    return apply_layer_cache(_transformer(pipe), LayerCacheConfig(schedule, telemetry=telemetry))


def disable(pipe) -> None:
    remove_layer_cache(_transformer(pipe))
