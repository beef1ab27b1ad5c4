"""core.buffers.read_buffer: the read buffer verify streams through (huge pages where offered)."""

from __future__ import annotations

import mmap

import pytest

from airflow_tf_ckpt.core.storage.buffers import HUGE_PAGE, read_buffer


@pytest.mark.parametrize("size", [1, 4096, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 5])
def test_exact_size_writable_and_released(tmp_path, size):
    data = bytes(range(256)) * (size // 256 + 1)
    p = tmp_path / "f"
    p.write_bytes(data[:size])
    with read_buffer(size) as view, open(p, "rb", buffering=0) as f:
        assert len(view) == size and not view.readonly and view.c_contiguous
        assert f.readinto(view) == size
        tail = max(0, size - 3)
        assert bytes(view[:16]) == data[: min(16, size)] and bytes(view[tail:]) == data[tail:size]
        kept = view[1:2]  # a slice outliving the block must not make the exit fail
    with pytest.raises(ValueError):
        view[0]  # released
    del kept


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE on this platform")
def test_large_buffers_ask_for_huge_pages():
    with read_buffer(8 << 20) as view:
        assert isinstance(view.obj, mmap.mmap)  # anonymous mmap, madvise(MADV_HUGEPAGE)
    with read_buffer(4096) as view:
        assert isinstance(view.obj, bytearray)
