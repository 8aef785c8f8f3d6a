"""Deprecated import path, kept for one release: use `layercache.studio.space`."""

from .studio.space import *  # noqa: F401,F403
