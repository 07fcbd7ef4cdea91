"""The suite's own rules: no test takes more than 1 GiB of memory (conftest's autouse check, which must be able to
fail a test)."""

from __future__ import annotations

import mmap
import os

import pytest
from conftest import MEMORY_LIMIT_KIB, peak_memory_within

CAN_RESET_THE_PEAK = os.access("/proc/self/clear_refs", os.W_OK)


def touch(size: int) -> None:
    """Make `size` bytes resident, then free them: fresh anonymous pages, never memory that malloc (or torch's
    allocator) kept from an earlier test, which would not raise the resident size."""
    block = mmap.mmap(-1, size)
    for i in range(0, size, mmap.PAGESIZE):
        block[i] = 1  # one byte per page makes the page resident
    block.close()


@pytest.mark.skipif(not CAN_RESET_THE_PEAK, reason="needs Linux's /proc/self/clear_refs")
def test_a_block_that_takes_more_than_its_limit_fails() -> None:
    too_much = pytest.raises(pytest.fail.Exception, match=r"a block took 0\.0[6-9] GiB of memory at its peak \(limit")
    with too_much, peak_memory_within(16 << 10, "a block"):  # 16 MiB
        touch(64 << 20)
    with peak_memory_within(128 << 10, "a block"):  # within 128 MiB: passes
        touch(64 << 20)


def test_every_test_runs_under_the_limit(request: pytest.FixtureRequest) -> None:
    assert "_memory_limit" in request.fixturenames and MEMORY_LIMIT_KIB == 1 << 20
