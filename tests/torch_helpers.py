"""Helpers of the torch-backend tests: one intra-op thread, and every spec at the smallest
overrides that compile (tests/spec_helpers.py)."""
from __future__ import annotations

import torch

from spec_helpers import ROOT, SPECS, small_graph  # noqa: F401 - the torch tests import them from here

# The test models are small: one intra-op thread avoids OpenMP barrier stalls on a shared
# CPU (building sl_vit took 6 s with 2 threads under load, 0.1 s with 1).
torch.set_num_threads(1)
