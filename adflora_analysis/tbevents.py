"""A minimal TensorBoard event-file writer and reader (no tensorflow, no tensorboard needed).

An event file is a TFRecord stream of ``Event`` protocol buffers: ``uint64 length``,
``uint32 masked CRC-32C of the length``, the bytes, ``uint32 masked CRC-32C of the bytes``.
Only what :mod:`adflora_analysis.export` writes is encoded: scalars (``simple_value``) and text
(a string tensor tagged for TensorBoard's text plugin). TensorBoard reads these files as its own
(``tests/test_export.py`` reads them back with tensorboard's ``EventAccumulator`` where
tensorboard is installed, and with :func:`read_events` everywhere).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

# -- CRC-32C (Castagnoli), as TFRecord needs


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_T = _table()


def _crc32c_py(data: bytes) -> int:
    c = 0xFFFFFFFF
    t = _T
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:  # a C implementation where one is installed (the pure one is ~1 µs per byte)
    from google_crc32c import value as crc32c  # type: ignore[import-not-found]
except ImportError:
    try:
        from crc32c import crc32c  # type: ignore[import-not-found]
    except ImportError:
        crc32c = _crc32c_py


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C.

    >>> hex(_crc32c_py(b"123456789"))
    '0xe3069283'
    """
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- protocol buffer encoding of the few messages needed


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint (64-bit two's complement for negatives).

    >>> varint(1), varint(300)
    (b'\\x01', b'\\xac\\x02')
    """
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_field(num: int, wire: int, payload: bytes) -> bytes:
    """Protobuf field ``num`` of wire type ``wire`` (2: length-delimited) holding ``payload``."""
    key = varint((num << 3) | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value`` of a float32 scalar."""
    return pb_field(1, 2, tag.encode()) + pb_field(2, 5, struct.pack("<f", value))


def text_value(tag: str, text: str) -> bytes:
    """A ``Summary.Value`` of the text plugin (a string tensor)."""
    meta = pb_field(1, 2, pb_field(1, 2, b"text"))             # plugin_data.plugin_name
    tensor = pb_field(1, 0, varint(7)) + pb_field(2, 2, b"") + pb_field(8, 2, text.encode())
    return pb_field(1, 2, tag.encode()) + pb_field(9, 2, meta) + pb_field(8, 2, tensor)


def event(step: int, values: list[bytes] | None = None, wall: float | None = None,
          file_version: str | None = None) -> bytes:
    """An ``Event`` message: wall time, ``step``, and a file version or a ``Summary`` of
    ``values`` (from :func:`scalar_value` / :func:`text_value`)."""
    out = pb_field(1, 1, struct.pack("<d", time.time() if wall is None else wall))
    out += pb_field(2, 0, varint(step))
    if file_version is not None:
        out += pb_field(3, 2, file_version.encode())
    if values:
        out += pb_field(5, 2, b"".join(pb_field(1, 2, v) for v in values))
    return out


def record(data: bytes) -> bytes:
    """``data`` as one TFRecord: length, its masked CRC, data, its masked CRC."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc(n)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Append scalar and text events to a new event file in ``logdir``.

    The events go to a temp file beside it, renamed to :attr:`path` when the writer closes
    without an error: an interrupted or failed write (a full disk) leaves no file behind.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with EventWriter(d) as w:
    ...     w.scalars(0, {"loss": 1.5}); w.text(0, "checks", "held")
    >>> [(e["step"], e["values"]) for e in read_events(w.path)][1:]
    [(0, {'loss': 1.5}), (0, {'checks': 'held'})]
    >>> with EventWriter(d) as w:
    ...     w.scalars(0, {"loss": 1 / 0})
    Traceback (most recent call last):
    ZeroDivisionError: division by zero
    >>> sorted(p.name.startswith(".") for p in Path(d).iterdir())  # the failed one is gone
    [False]
    """

    def __init__(self, logdir: str | Path):
        from adflora_analysis.fileio import atomic_path

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.adflora")
        self.path = self.logdir / name
        self._atomic = atomic_path(self.path)   # the temp file, renamed by close()
        self._tmp = self._atomic.__enter__()
        self._f = None
        try:
            self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/discard()
            self._f.write(record(event(0, file_version="brain.Event:2")))
        except BaseException:
            self.discard()
            raise

    def scalars(self, step: int, values: dict[str, float], wall: float | None = None) -> None:
        """One event holding every ``tag: value`` of round ``step``."""
        vals = [scalar_value(t, float(v)) for t, v in values.items()]
        if vals:
            self._f.write(record(event(step, vals, wall)))

    def text(self, step: int, tag: str, text: str) -> None:
        """A Markdown text (TensorBoard's text plugin) at ``step``."""
        self._f.write(record(event(step, [text_value(tag, text)])))

    def close(self) -> None:
        """Flush, fsync and rename the temp file to :attr:`path` (removed on failure)."""
        try:
            self._f.close()
            self._atomic.__exit__(None, None, None)   # fsync, rename
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temp file (nothing of this writer is left)."""
        if self._f is not None and not self._f.closed:
            with contextlib.suppress(OSError):
                self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


# -- reading back (checks every CRC)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        if not c & 0x80:
            return n, i
        shift += 7


def _fields(b: bytes) -> Iterator[tuple[int, int, object]]:
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(b, i)
        elif wire == 1:
            v, i = b[i:i + 8], i + 8
        elif wire == 5:
            v, i = b[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, v


def _parse_value(b: bytes) -> tuple[str, object]:
    tag, val = "", None
    for num, _, v in _fields(b):
        if num == 1:
            tag = v.decode()
        elif num == 2:
            val = struct.unpack("<f", v)[0]
        elif num == 8:
            for n2, _, v2 in _fields(v):
                if n2 == 8:
                    val = v2.decode()
    return tag, val


def read_events(path: str | Path) -> list[dict]:
    """Every event of a file: ``{"wall_time", "step", "file_version", "values"}``; a CRC
    mismatch is a ``ValueError``."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        (c,) = struct.unpack_from("<I", data, i + 8)
        if c != masked_crc(data[i:i + 8]):
            raise ValueError(f"{path}: length CRC mismatch at byte {i}")
        rec = data[i + 12:i + 12 + n]
        (c,) = struct.unpack_from("<I", data, i + 12 + n)
        if c != masked_crc(rec):
            raise ValueError(f"{path}: data CRC mismatch at byte {i}")
        i += 16 + n
        ev = {"wall_time": 0.0, "step": 0, "file_version": None, "values": {}}
        for num, _, v in _fields(rec):
            if num == 1:
                ev["wall_time"] = struct.unpack("<d", v)[0]
            elif num == 2:
                ev["step"] = v
            elif num == 3:
                ev["file_version"] = v.decode()
            elif num == 5:
                for n2, _, v2 in _fields(v):
                    if n2 == 1:
                        tag, val = _parse_value(v2)
                        ev["values"][tag] = val
        out.append(ev)
    return out
