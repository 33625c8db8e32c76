import os

# Tests never reach the internet; set before anything imports huggingface_hub or timm.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

import se_hub  # noqa: E402,F401  (registers the models)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def image_batch():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def local_hub():
    """A Hub look-alike on 127.0.0.1 (tests/hub_server.py), stopped after the test."""
    from hub_server import LocalHub

    hub = LocalHub()
    try:
        yield hub
    finally:
        hub.stop()
