import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sr_arch  # noqa: E402,F401  (registers everything once for the whole session)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Tiny networks run fastest on one intra-op thread, and don't spin-wait for shared cores.

    Test modules opt in with ``pytestmark = pytest.mark.usefixtures('one_torch_thread')``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
