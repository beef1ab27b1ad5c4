"""CRC32C as leveldb and TensorFlow use it: the Castagnoli polynomial, plus the "mask".

Checksums that are stored next to the data they cover are masked (leveldb ``crc32c.h``), so that
the CRC of a string that itself holds a CRC is not trivially related to it:
``masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32).

The arithmetic goes through ``google_crc32c``'s C extension (hardware CRC32C where the CPU has
it). Note its ``extend``/``value`` only accept ``bytes`` (not ``memoryview``/``bytearray``) and
release the GIL only for ``bytes`` of 1 MiB or more: hot paths should hand it whole ``bytes``.
"""

from __future__ import annotations

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
