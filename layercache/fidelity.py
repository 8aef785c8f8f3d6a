"""Deprecated import path, kept for one release: use `layercache.evaluation.fidelity`."""

from .evaluation.fidelity import *  # noqa: F401,F403
