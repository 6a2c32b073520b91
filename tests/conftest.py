"""Shared test setup: every test starts from the same random state, whatever ran before it; one small demo per session."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Seed Python's, NumPy's and torch's global generators so that a test's random inputs never depend on test order."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# Small enough that a whole headless job runs in about half the time of one on the default demo,
# big enough for every notebook's steps: 4 classes x 6 labeled (4 train + 2 validation each), 48
# unlabeled images, 24 test images (the fault hooks kill the submission write at its 20th mask).
SMALL_DEMO = dict(num_classes=4, per_class=6, num_unlabeled=48, num_test=24)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """The ImageNet-Subset root of a small demo dataset (SMALL_DEMO), made once per test session."""
    from helpers.demo import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("small-demo"), progress=False, **SMALL_DEMO)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test` runs `-n 2`): every notebook on one worker, in order, since each
    reads the files of the one before; the test files spread over the workers, a file to a worker.

    (xdist's own `--dist loadgroup` cannot group nbval's cells under pytest 9: it renames node ids.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksInOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if nodeid.startswith("notebooks/") else nodeid.split("::", 1)[0]

    return NotebooksInOrder(config, log)
