from .model import DigitLabelEncoder, build_transformer, pack, unpack
from .pipeline import DEFAULT_GUIDANCE, TinyDigitPipeline, parse_prompt

__all__ = ["DEFAULT_GUIDANCE", "DigitLabelEncoder", "TinyDigitPipeline", "build_transformer", "pack", "parse_prompt",
           "unpack"]
