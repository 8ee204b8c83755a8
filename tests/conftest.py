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


#: module fixtures that cost minutes (trainings, ONNX exports): under pytest-xdist (``make test`` runs ``-n auto
#: --dist loadgroup``) the tests sharing one instance go to one worker, so it is built once, not once per worker
EXPENSIVE_SHARED_FIXTURES = ('tiny_trainings', 'psnr_stage', 'exported')


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in EXPENSIVE_SHARED_FIXTURES:
            if name in getattr(item, 'fixturenames', ()):
                callspec = getattr(item, 'callspec', None)
                param = callspec.params.get(name) if callspec is not None else None
                item.add_marker(pytest.mark.xdist_group(name if param is None else f'{name}-{param}'))
