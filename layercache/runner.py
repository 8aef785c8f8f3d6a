"""Deprecated import path, kept for one release: the runner is `layercache.studio.runner`, the app's workbench
`layercache.studio.workbench`, the cache methods `layercache.methods`."""

from .methods import LayerCacheSetting as LayerCacheMethod  # noqa: F401
from .methods import MeanCacheSetting as MeanCacheMethod  # noqa: F401
from .methods import Uncached as NoCache  # noqa: F401
from .studio.runner import LANES, LockstepRunner, preview_image, twin  # noqa: F401
from .studio.workbench import HUB_CALIBRATION_CALLS, Workbench, cache_dir  # noqa: F401
