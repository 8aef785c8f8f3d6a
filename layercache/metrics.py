"""Deprecated import path, kept for one release: use `layercache.evaluation.metrics`."""

from .evaluation.metrics import *  # noqa: F401,F403
