"""Deprecated import path, kept for one release: use `layercache.evaluation.speed`."""

from .evaluation.speed import *  # noqa: F401,F403
