"""Read buffers for streaming large files.

Why not a plain ``bytearray``: in a fresh process on a VM, the kernel's copy of page-cached file
data into a buffer of 4 KiB pages ran at ~2.3 GiB/s here, and into the same buffer backed by
transparent huge pages at ~8.5 GiB/s (1 GiB of checkpoint shards read with 8 MiB ``readinto``:
0.45 s against 0.12 s; ``bench/verify.py`` measures the effect on a whole ``tf-ckpt validate``).
Kernels with THP in ``madvise`` mode (the usual default) give huge pages only to memory that asks
for them, which a ``bytearray`` never does; an anonymous ``mmap`` can. Nothing else changes: the
file itself is still read with ``readinto`` (no file ``mmap``, so a file truncated under us is an
ordinary short read, never a SIGBUS).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import contextmanager

HUGE_PAGE = 2 << 20


@contextmanager
def read_buffer(size: int) -> Iterator[memoryview]:
    """A writable ``memoryview`` of ``size`` bytes, huge-page backed where the platform allows."""
    size = max(int(size), 1)
    m: mmap.mmap | None = None
    if size >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m = mmap.mmap(-1, -(-size // HUGE_PAGE) * HUGE_PAGE)
            m.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError):
            if m is not None:
                m.close()
            m = None
    if m is None:
        whole = memoryview(bytearray(size))
    else:
        whole = memoryview(m)
    view = whole[:size]
    try:
        yield view
    finally:
        view.release()
        whole.release()
        if m is not None:
            try:
                m.close()
            except BufferError:  # a slice of the view is still referenced: freed with it
                pass
