"""Shared test setup for the algorithm core.

The tensors here are tiny, so intra-op threading only adds overhead (on a
loaded 2-core machine a 24-element log_softmax took ~12 ms with 2 threads and
~1 us with 1). Run each test single-threaded and restore the setting after.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
