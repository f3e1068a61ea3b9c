"""LZW as Go's ``compress/lzw`` writes it with ``LSB`` order and ``litWidth = 8``.

memberlist compresses packets and streams with exactly this variant, so the bytes must match:

* codes are packed least-significant bit first; they start 9 bits wide;
* code 256 is *clear*, 257 is *end of data*; new strings get codes from 258 up;
* the width grows by one bit when the next code to assign reaches ``1 << width``, up to 12
  bits; when the encoder's next code would be 4095 it sends *clear* and starts over;
* the encoder sends *clear* first (Go 1.17 and later; older Go did not, and the decoder
  accepts both) and *end of data* last, then pads the final byte with zeros;
* a stream without the end code is an error (Go's reader reports an unexpected EOF).

Decoding stops with :class:`LzwError` on any invalid code, and once the output would exceed
``max_output`` bytes, so a small packet cannot expand without bound.
"""

from __future__ import annotations

from pulse.errors import FrameTooLarge, RemoteProtocolError

_LIT_WIDTH = 8
_CLEAR = 1 << _LIT_WIDTH
_EOF = _CLEAR + 1
_MAX_CODE = (1 << 12) - 1


class LzwError(RemoteProtocolError):
    """LZW data that Go's ``compress/lzw`` reader would refuse."""


class LzwTooLarge(LzwError, FrameTooLarge):
    """Decompressed data larger than the allowed limit."""


class _BitWriter:
    __slots__ = ("bits", "nbits", "out")

    def __init__(self) -> None:
        self.out = bytearray()
        self.bits = 0
        self.nbits = 0

    def write(self, code: int, width: int) -> None:
        self.bits |= code << self.nbits
        self.nbits += width
        while self.nbits >= 8:
            self.out.append(self.bits & 0xFF)
            self.bits >>= 8
            self.nbits -= 8

    def finish(self) -> bytes:
        if self.nbits > 0:
            self.out.append(self.bits & 0xFF)
        return bytes(self.out)


def compress(data: bytes) -> bytes:
    """``data`` compressed byte-for-byte as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` does."""
    out = _BitWriter()
    width = _LIT_WIDTH + 1
    out.write(_CLEAR, width)
    if not data:
        out.write(_EOF, width)
        return out.finish()
    hi = _EOF
    overflow = 1 << width
    table: dict[int, int] = {}
    code = data[0]

    def inc_hi() -> bool:
        # Returns True when the table was reset (the caller must not add an entry).
        nonlocal hi, width, overflow
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == _MAX_CODE:
            out.write(_CLEAR, width)
            width = _LIT_WIDTH + 1
            hi = _EOF
            overflow = _CLEAR << 1
            table.clear()
            return True
        return False

    for literal in data[1:]:
        key = (code << 8) | literal
        found = table.get(key)
        if found is not None:
            code = found
            continue
        out.write(code, width)
        code = literal
        if not inc_hi():
            table[key] = hi
    out.write(code, width)
    inc_hi()
    out.write(_EOF, width)
    return out.finish()


def decompress(data: bytes, max_output: int = 1 << 22) -> bytes:
    """Expand Go-LZW ``data``; at most ``max_output`` bytes come out."""
    width = _LIT_WIDTH + 1
    hi = _EOF
    overflow = 1 << width
    last = -1
    # table[code] = the bytes the code expands to (codes >= 258).
    table: dict[int, bytes] = {}
    out = bytearray()
    bits = 0
    nbits = 0
    pos = 0
    n = len(data)
    while True:
        while nbits < width:
            if pos >= n:
                raise LzwError("LZW data ends before its end code")
            bits |= data[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & ((1 << width) - 1)
        bits >>= width
        nbits -= width
        if code < _CLEAR:
            entry = bytes((code,))
        elif code == _CLEAR:
            width = _LIT_WIDTH + 1
            hi = _EOF
            overflow = 1 << width
            last = -1
            table.clear()
            continue
        elif code == _EOF:
            return bytes(out)
        elif code <= hi:
            if code == hi and last != -1:
                prev = _expand(table, last)
                entry = prev + prev[:1]
            else:
                if code not in table:
                    raise LzwError(f"invalid LZW code {code}")
                entry = table[code]
        else:
            raise LzwError(f"invalid LZW code {code}")
        if len(out) + len(entry) > max_output:
            raise LzwTooLarge(f"LZW data expands beyond {max_output} bytes")
        out += entry
        if last != -1 and hi <= _MAX_CODE:
            table[hi] = _expand(table, last) + entry[:1]
        last = code
        hi += 1
        if hi >= overflow:
            if hi > _MAX_CODE:
                hi = _MAX_CODE
            else:
                width += 1
                overflow <<= 1


def _expand(table: dict[int, bytes], code: int) -> bytes:
    if code < _CLEAR:
        return bytes((code,))
    return table[code]
