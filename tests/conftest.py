"""Shared test setup: every test starts from the same random state, whatever ran before it."""
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
