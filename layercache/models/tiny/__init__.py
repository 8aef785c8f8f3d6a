"""The bundled digit model: its transformer, pipeline, training script, data sets and classifier.

Names are loaded on first use (PEP 562), so that `defaults` (paths, guidance) is importable without torch.
"""

import importlib

_LAZY = {"DigitLabelEncoder": "model", "build_transformer": "model", "pack": "model", "unpack": "model",
         "DEFAULT_GUIDANCE": "defaults", "TinyDigitPipeline": "pipeline", "parse_prompt": "pipeline"}

__all__ = ["DEFAULT_GUIDANCE", "DigitLabelEncoder", "TinyDigitPipeline", "build_transformer", "pack", "parse_prompt",
           "unpack"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
