"""Deprecated import path, kept for one release: use `layercache.studio.viz`."""

from .studio.viz import *  # noqa: F401,F403
