"""The sandbox's wire format: plain Python values as tagged, length-prefixed bytes.

Used between the trainer and the sandbox init (the job, the report) and between the test
runner and the solution process (calls and their results). It is self-contained on purpose:
the solution process gets this file's source on its command line, and the init imports it
before anything else, so it imports nothing and decodes defensively: every length is checked
against the bytes that are left, nesting is bounded, and only these types come out::

    None bool int float complex str bytes list tuple set frozenset dict  + handles

A handle is a number standing for an object that is not plain data (a function, an instance
of a class the solution defined, a generator); the side that owns the object keeps it and the
other side can only name it. Nothing here ever runs code of the sender: no pickle, no eval.
"""

MAX_DEPTH = 64
_SEQ_TAGS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}
_SEQ_TYPES = {ord("l"): list, ord("t"): tuple, ord("S"): set, ord("z"): frozenset}


class WireError(ValueError):
    """Bytes that are not a well-formed value."""


class Ref:
    """A handle number to send as it is (for a value that is plain but too deep to send)."""

    __slots__ = ("number",)

    def __init__(self, number):
        self.number = number


def dumps(value, handle=None):
    """Encode ``value``; objects that are not plain data become ``handle(obj) -> int`` when a
    ``handle`` function is given, else a ``TypeError``."""
    out = bytearray()
    _encode(value, out, handle, 0)
    return bytes(out)


def _count(out, n):
    out += n.to_bytes(4, "big")


def _encode(v, out, handle, depth):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None:
        out += b"N"
    elif v is True:
        out += b"T"
    elif v is False:
        out += b"F"
    elif t is int:
        raw = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
        out += b"i"
        _count(out, len(raw))
        out += raw
    elif t is float:
        raw = v.hex().encode("ascii")
        out += b"f" + bytes([len(raw)]) + raw
    elif t is complex:
        out += b"c"
        _encode(v.real, out, handle, depth + 1)
        _encode(v.imag, out, handle, depth + 1)
    elif t is str or t is bytes:
        raw = v.encode("utf-8", "surrogatepass") if t is str else v
        out += b"s" if t is str else b"b"
        _count(out, len(raw))
        out += raw
    elif t in _SEQ_TAGS:
        items = list(v)
        out += _SEQ_TAGS[t]
        _count(out, len(items))
        for item in items:
            _encode(item, out, handle, depth + 1)
    elif t is dict:
        items = list(v.items())
        out += b"d"
        _count(out, len(items))
        for key, item in items:
            _encode(key, out, handle, depth + 1)
            _encode(item, out, handle, depth + 1)
    elif t is Ref:
        out += b"h"
        _count(out, v.number)
    elif handle is not None:
        out += b"h"
        _count(out, handle(v))
    else:
        raise TypeError(f"cannot send a {t.__name__} through the sandbox")


def loads(data, handle=None):
    """Decode bytes from ``dumps``; a handle number becomes ``handle(n)`` (an error without one)."""
    view = memoryview(data)
    try:
        value, pos = _decode(view, 0, handle, 0)
    except WireError:
        raise
    except (IndexError, ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError, MemoryError) as err:
        raise WireError(f"malformed value: {type(err).__name__}: {err}") from None
    if pos != len(view):
        raise WireError("trailing bytes after the value")
    return value


def _u32(view, pos):
    if pos + 4 > len(view):
        raise WireError("truncated length")
    return int.from_bytes(view[pos : pos + 4], "big"), pos + 4


def _decode(view, pos, handle, depth):
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    tag = view[pos]
    pos += 1
    if tag == 78:  # N
        return None, pos
    if tag == 84:  # T
        return True, pos
    if tag == 70:  # F
        return False, pos
    if tag in (105, 115, 98):  # i s b
        n, pos = _u32(view, pos)
        if pos + n > len(view):
            raise WireError("truncated data")
        raw = view[pos : pos + n]
        pos += n
        if tag == 105:
            return int.from_bytes(raw, "big", signed=True), pos
        return (bytes(raw).decode("utf-8", "surrogatepass") if tag == 115 else bytes(raw)), pos
    if tag == 102:  # f
        n = view[pos]
        raw = bytes(view[pos + 1 : pos + 1 + n])
        if len(raw) != n:
            raise WireError("truncated float")
        return float.fromhex(raw.decode("ascii")), pos + 1 + n
    if tag == 99:  # c
        real, pos = _decode(view, pos, handle, depth + 1)
        imag, pos = _decode(view, pos, handle, depth + 1)
        if type(real) is not float or type(imag) is not float:
            raise WireError("malformed complex")
        return complex(real, imag), pos
    if tag in _SEQ_TYPES or tag == 100:  # l t S z d
        n, pos = _u32(view, pos)
        if n > len(view) - pos:  # every item takes at least one byte
            raise WireError("count larger than the data")
        items = []
        for _ in range(n * 2 if tag == 100 else n):
            item, pos = _decode(view, pos, handle, depth + 1)
            items.append(item)
        if tag == 100:
            return dict(zip(items[0::2], items[1::2])), pos
        kind = _SEQ_TYPES[tag]
        return (items if kind is list else kind(items)), pos
    if tag == 104:  # h
        if handle is None:
            raise WireError("unexpected handle")
        n, pos = _u32(view, pos)
        return handle(n), pos
    raise WireError(f"unknown tag {tag}")


def frame(payload):
    """One message: a 4-byte big-endian length, then the payload."""
    return len(payload).to_bytes(4, "big") + payload
