import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sr_arch  # noqa: E402,F401  (registers everything once for the whole session)

# Tiny networks run fastest on one intra-op thread, and one thread does not spin-wait for cores that other
# processes hold on a busy machine (subprocesses get the same through helpers.ONE_THREAD).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
