import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # two threads on the 2-core reference machine; OMP_NUM_THREADS (also read by the entry points
    # the tests start) caps it on a loaded machine, where spinning threads would fight each other
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", max(1, min(2, os.cpu_count() or 1)))))
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One victim cache for the whole test session, so victims are made once."""
    return tmp_path_factory.mktemp("victim-cache")
