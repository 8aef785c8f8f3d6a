from .model import DigitLabelEncoder, build_transformer, pack, unpack
from .pipeline import DEFAULT_GUIDANCE, TinyDigitPipeline, parse_prompt
