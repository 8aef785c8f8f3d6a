"""Deprecated import path, kept for one release: use `layercache.evaluation.bench_gpu`."""

from .evaluation.bench_gpu import *  # noqa: F401,F403
