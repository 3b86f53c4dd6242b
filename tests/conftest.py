"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core machine run many times slower with two threads than with
    # one, and bit-for-bit comparisons (resume, round trips) want one fixed thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
