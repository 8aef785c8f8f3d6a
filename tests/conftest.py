import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipe():
    from layercache.models.tiny import TinyDigitPipeline
    pipe = TinyDigitPipeline.from_weights()
    pipe.set_progress_bar_config(disable=True)
    return pipe
