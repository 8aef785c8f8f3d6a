"""Where the bundled model's files live and its default guidance: plain constants, importable without torch (the
command line shows them in `--help`)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[3] / "assets"
DEFAULT_WEIGHTS = ASSETS / "tiny"
DEFAULT_CLASSIFIER = ASSETS / "classifier" / "model.safetensors"
DEFAULT_GUIDANCE = 3.0
