"""The test runner's view of the solution process: ``Connection`` (one request, one reply over
the solution's pipes) and ``Remote`` (a handle on one of the solution's objects).

Everything that crosses is a plain value (``_wire``); the solution's exceptions come back as
fresh builtin exceptions. Kept apart from the init's process steps: this is the protocol the
tests see. Imports only builtin modules.
"""

import os
import select

try:  # imported by the trainer as part of brainstacks_pl.sandbox ...
    from . import _wire
except ImportError:  # ... and by the sandbox's init as a top-level module next to them
    import _wire


class SolutionGone(BaseException):
    """The solution process exited or broke the protocol: nothing after this can pass."""


class SolutionError(Exception):
    """An exception raised inside the solution whose type is not a builtin exception."""


class Connection:
    """The test runner's end of the solution's pipes: one request, one reply."""

    def __init__(self, rfd, wfd, max_bytes):
        self.rfd, self.wfd, self.max_bytes = rfd, wfd, max_bytes
        self.gone = None  # why the solution can no longer answer

    def _read(self, n):
        chunks, left = [], n
        while left:
            select.select([self.rfd], [], [])  # interruptible by the deadline's SIGALRM
            chunk = os.read(self.rfd, min(left, 1 << 20))
            if not chunk:
                raise self.lost("the solution process exited")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def lost(self, why):
        if self.gone is None:
            self.gone = why
        return SolutionGone(self.gone)

    def receive(self):
        if self.gone is not None:
            raise SolutionGone(self.gone)
        size = int.from_bytes(self._read(4), "big")
        if size > self.max_bytes:
            raise self.lost(f"the solution sent {size} bytes, more than max_value_bytes={self.max_bytes}")
        try:
            return _wire.loads(self._read(size), self.remote)
        except _wire.WireError as err:
            raise self.lost(f"the solution broke the protocol: {err}") from None

    def remote(self, ref):
        return Remote(self, ref)

    def ask(self, op, ref, *args):
        if self.gone is not None:
            raise SolutionGone(self.gone)
        try:
            payload = _wire.dumps((op, ref, *args), self._ref_of)
        except RecursionError:
            raise ValueError("value nested too deeply to send to the solution") from None
        data = memoryview(_wire.frame(payload))
        try:
            while data:
                data = data[os.write(self.wfd, data) :]
        except BrokenPipeError:
            raise self.lost("the solution process exited") from None
        reply = self.receive()
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if (
            type(reply) is tuple
            and len(reply) == 3
            and reply[0] == "err"
            and type(reply[1]) is str
            and type(reply[2]) is str
        ):
            raise rebuild_exception(reply[1], reply[2])
        raise self.lost("the solution broke the protocol: unexpected reply")

    def _ref_of(self, obj):
        if type(obj) is Remote and object.__getattribute__(obj, "_conn") is self:
            return object.__getattribute__(obj, "_ref")
        raise TypeError(f"cannot pass a {type(obj).__name__} to the solution (only plain data and its own objects)")


def rebuild_exception(name, message):
    """The solution's exception as a fresh builtin exception of the same name, else SolutionError."""
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return SolutionError(f"{name}: {message}")


def _want(value, kind, what):
    if type(value) is not kind:
        raise TypeError(f"the solution's {what} returned a {type(value).__name__}, not a {kind.__name__}")
    return value


class Remote:
    """An object that lives in the solution process. Attribute access, calls, indexing,
    iteration, ``len``, ``bool``, ``str`` and arithmetic are forwarded; comparisons are forwarded
    only between two of the solution's objects: one of its objects never equals a plain value
    here (an object claiming to equal everything cannot pass an ``assert f(x) == 3``)."""

    __slots__ = ("_conn", "_ref")

    def __init__(self, conn, ref):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_ref", ref)

    def _ask(self, op, *args):
        return object.__getattribute__(self, "_conn").ask(op, object.__getattribute__(self, "_ref"), *args)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, value)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args, kwargs)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value):
        self._ask("setitem", key, value)

    def __delitem__(self, key):
        self._ask("delitem", key)

    def __len__(self):
        return _want(self._ask("len"), int, "__len__")

    def __bool__(self):
        return _want(self._ask("bool"), bool, "__bool__")

    def __iter__(self):
        return self._ask("iter")

    def __next__(self):
        return self._ask("next")

    def __contains__(self, item):
        return _want(self._ask("contains", item), bool, "__contains__")

    def __str__(self):
        return _want(self._ask("str"), str, "__str__")

    def __repr__(self):
        return _want(self._ask("repr"), str, "__repr__")

    def __hash__(self):
        return hash((id(object.__getattribute__(self, "_conn")), object.__getattribute__(self, "_ref")))

    def __instancecheck__(self, obj):
        return _want(self._ask("isinstance", obj), bool, "isinstance")

    def _compare(self, op, other):
        if type(other) is not Remote or object.__getattribute__(other, "_conn") is not object.__getattribute__(
            self, "_conn"
        ):
            return NotImplemented
        return self._ask("compare", op, other)


def _comparison(name):
    def op(self, other):
        return self._compare(name, other)

    return op


def _unary(name):
    def op(self):
        return self._ask("unary", name)

    return op


def _binop(name, reflected):
    def op(self, other):
        return self._ask("binop", name, other, reflected)

    return op


for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "and",
    "or",
    "xor",
    "lshift",
    "rshift",
    "matmul",
):
    setattr(Remote, f"__{_name}__", _binop(_name, False))
    setattr(Remote, f"__r{_name}__", _binop(_name, True))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Remote, f"__{_name}__", _comparison(_name))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Remote, f"__{_name}__", _unary(_name))
