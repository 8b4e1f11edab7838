"""Shared test setup for the algorithm core: every test runs single-threaded."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Applies tests/conftest.py's `single_thread` to every test in this folder."""
