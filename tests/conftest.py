"""Shared pytest fixtures (opt-in: a test module asks for them with ``pytestmark``)."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one torch thread: small batches run fastest that way, and the test
    machines' cores are shared. Restores the previous thread count afterwards.

    Use: ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
