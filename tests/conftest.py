
import pytest
import torch

# Small, deterministic, and quick to compile: one intra-op thread keeps timings and results stable
# on the 2-core CI machine.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
