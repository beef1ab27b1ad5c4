"""CRC32C as leveldb and TensorFlow use it: the Castagnoli polynomial, plus the "mask".

Checksums that are stored next to the data they cover are masked (leveldb ``crc32c.h``), so that
the CRC of a string that itself holds a CRC is not trivially related to it:
``masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32).

The arithmetic goes through ``google_crc32c``'s C extension (hardware CRC32C where the CPU has
it). Note its ``extend``/``value`` only accept ``bytes`` (not ``memoryview``/``bytearray``) and
release the GIL only for ``bytes`` of 1 MiB or more: hot paths should hand it whole ``bytes``.
"""

from __future__ import annotations

from typing import Any

import google_crc32c

MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def mask(crc: int) -> int:
    """The masked form of ``crc`` (what TF and leveldb store)."""
    crc &= _U32
    return ((((crc >> 15) | (crc << 17)) & _U32) + MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """Invert :func:`mask`."""
    rot = (masked - MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def value(data: bytes) -> int:
    """CRC32C of ``data``."""
    return google_crc32c.value(bytes(data) if not isinstance(data, bytes) else data)


def extend(crc: int, data: bytes) -> int:
    """CRC32C of (whatever gave ``crc``) followed by ``data``."""
    return google_crc32c.extend(crc, bytes(data) if not isinstance(data, bytes) else data)


# --- zero-copy CRC over any writable buffer (bytearray / its memoryview slices) ---------------
#
# google_crc32c's Python entry points take ``bytes`` only, so checking a slice of a reusable
# read buffer would cost a copy per call. Its wheel links the C library (``crc32c_extend``);
# reaching that through ctypes lets us CRC a slice of a preallocated buffer in place, and ctypes
# releases the GIL for the call (so threads checking several shards run in parallel). If the
# symbol cannot be found (another build, pure-Python fallback) we copy to bytes instead.


def _load_c_extend() -> Any:
    try:
        import ctypes

        from google_crc32c import _crc32c  # the C extension; its dependency holds crc32c_extend

        fn = ctypes.CDLL(_crc32c.__file__).crc32c_extend
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        probe = bytearray(b"123456789")
        arr = (ctypes.c_char * len(probe)).from_buffer(probe)
        if fn(0, ctypes.addressof(arr), len(probe)) != 0xE3069283:
            return None
        del arr
        return fn, ctypes
    except Exception:  # noqa: BLE001 - any failure means "use the portable path"
        return None


_C = _load_c_extend()
_SMALL = 4096  # below this, a copy + the bytes API is cheaper than building a ctypes view


def extend_buffer(crc: int, buf: bytes | bytearray | memoryview) -> int:
    """:func:`extend` for any buffer; zero-copy (and GIL-free) for writable ones."""
    n = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
    if isinstance(buf, bytes):
        return google_crc32c.extend(crc, buf)
    if _C is None or n < _SMALL or (isinstance(buf, memoryview) and (buf.readonly or not buf.c_contiguous)):
        return google_crc32c.extend(crc, bytes(buf))
    fn, ctypes = _C
    arr = (ctypes.c_char * n).from_buffer(buf)
    try:
        return fn(crc & _U32, ctypes.addressof(arr), n)
    finally:
        del arr


def zero_copy_available() -> bool:
    return _C is not None
