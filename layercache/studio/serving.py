"""A Space's startup: load the hub models space.yaml serves before the first request.

ZeroGPU runs each GPU-decorated call in a worker process: a model loaded inside one is gone after it, so models
must load at startup, outside those calls (the weights moved to "cuda" there are put on the GPU for each call).
`start` loads each served model into the workbench; a model that cannot load here (no GPU, weights absent and
offline, a gated repo without a token, out of memory) gets one message, logged and shown in the app, and the app
serves the others and the bundled model. On ZeroGPU the workbench then refuses to load any other hub model later
(`Workbench.startup_only`): it would load inside a GPU call, on every call.

LAYERCACHE_SERVE overrides space.yaml's list for this process (comma-separated keys; empty: no hub model), e.g.
for a local GPU that holds fewer models than the Space's.
"""

import os

from ..models.registry import MODELS, get_entry
from .space import serve


def served_models(served: dict | None = None) -> list[str]:
    """The hub models to load at startup: LAYERCACHE_SERVE if set, else space.yaml's serve.models."""
    if "LAYERCACHE_SERVE" not in os.environ:
        return list((served or serve())["models"])
    keys = [key.strip() for key in os.environ["LAYERCACHE_SERVE"].split(",") if key.strip()]
    hub = [key for key, entry in MODELS.items() if not entry.bundled]
    unknown = [key for key in keys if key not in hub]
    if unknown:
        raise ValueError(f"LAYERCACHE_SERVE names {', '.join(map(repr, unknown))}: not hub models; valid keys: "
                         f"{', '.join(hub)}")
    return keys


def start(bench, served: dict | None = None, zero_gpu: bool = False, log=print) -> dict:
    """Load every served hub model into `bench`; returns {key: "loaded" or why not}. `zero_gpu`: from now on the
    workbench loads no other hub model."""
    status = {}
    for key in served_models(served):
        label = get_entry(key).label
        try:
            bench.runner(key)  # availability, the allow-list and the loader's own messages live there
        except (ValueError, RuntimeError, OSError) as err:  # RuntimeError: CUDA out of memory, among others
            reason = " ".join(str(err).split())
            bench.unavailable[key] = reason
            status[key] = reason
            log(f"{label}: not loaded at startup: {reason}. The app serves the other models.")
        else:
            status[key] = "loaded"
            log(f"{label}: loaded at startup")
    bench.startup_only = zero_gpu
    return status


def initial_model(bench, served: dict | None = None, fallback: str = "tiny") -> str:
    """The model the app opens on: space.yaml's serve.default if it is the bundled model or loaded at startup, else
    `fallback` (the bundled model, space.yaml's defaults.model)."""
    default = (served or serve())["default"]
    return default if get_entry(default).bundled or bench.is_loaded(default) else fallback
