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


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding tiny random FLUX.1-dev, SD3.5 Medium and Qwen-Image under their real repo ids
    (tests/hub_fixture.py); built once per session, a few seconds."""
    from hub_fixture import write_hub_cache
    return write_hub_cache(tmp_path_factory.mktemp("hf_home") / "hub")


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """The Hub offline, that cache in use, hub models on the CPU. huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE into its `constants` at import, and reads those at call time: set both, and the environment
    for child processes."""
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("LAYERCACHE_DEVICE", "cpu")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return hub_cache
