"""The solution process's harness.

It runs untrusted code, so nothing it reports is trusted: in "script" mode it runs the program
and exits with its status; in "serve" mode it runs the program as a module and then answers the
test runner's requests (call this, get that attribute, iterate that) with plain values or
handles. The test runner, in another process the solution cannot reach, decides what passed.
Root mode runs ``main()`` in a fork of the init; user mode sends this file's source after
``_wire.py``'s on a fresh interpreter's command line (which defines ``dumps``, ``loads``,
``frame`` and ``Ref`` and runs ``main()``).
"""

import builtins
import os
import sys

if "dumps" not in globals():  # imported, not concatenated after _wire's source
    try:
        from ._wire import Ref, dumps, frame, loads
    except ImportError:
        from _wire import Ref, dumps, frame, loads

_BINOPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b,
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
    "pow": lambda a, b: a**b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "lshift": lambda a, b: a << b,
    "rshift": lambda a, b: a >> b,
    "matmul": lambda a, b: a @ b,
}
_COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
_UNARY = {"neg": lambda a: -a, "pos": lambda a: +a, "abs": abs, "invert": lambda a: ~a}


def _call(target, rest):
    args, kwargs = rest
    return target(*args, **kwargs)


def _setitem(target, rest):
    target[rest[0]] = rest[1]


def _delitem(target, rest):
    del target[rest[0]]


def _binop(target, rest):
    name, other, reflected = rest
    return _BINOPS[name](other, target) if reflected else _BINOPS[name](target, other)


# One handler per request the test runner may send: (the solution's object, the request's
# arguments) -> the reply's value.
_OPS = {
    "call": _call,
    "getattr": lambda target, rest: getattr(target, rest[0]),
    "setattr": lambda target, rest: setattr(target, rest[0], rest[1]),
    "getitem": lambda target, rest: target[rest[0]],
    "setitem": _setitem,
    "delitem": _delitem,
    "len": lambda target, rest: len(target),
    "bool": lambda target, rest: bool(target),
    "iter": lambda target, rest: iter(target),
    "next": lambda target, rest: next(target),
    "contains": lambda target, rest: rest[0] in target,
    "str": lambda target, rest: str(target),
    "repr": lambda target, rest: repr(target),
    "hash": lambda target, rest: hash(target),
    "isinstance": lambda target, rest: isinstance(rest[0], target),
    "binop": _binop,
    "compare": lambda target, rest: _COMPARE[rest[0]](target, rest[1]),
    "unary": lambda target, rest: _UNARY[rest[0]](target),
}


def _read_exactly(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd, payload):
    data = memoryview(frame(payload))
    while data:
        data = data[os.write(fd, data) :]


def _describe(err):
    try:
        message = str(err)[:2000]
    except BaseException:
        message = "<unprintable>"
    return type(err).__name__, message


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _serve(namespace, rfd, wfd):
    objects, refs = {}, {}

    def store(obj):
        ref = refs.get(id(obj))
        if ref is None:
            ref = len(objects) + 1
            objects[ref], refs[id(obj)] = obj, ref
        return ref

    def lookup(ref):
        return objects[ref]

    names = {}
    for name, value in list(namespace.items()):
        if not (name.startswith("__") and name.endswith("__")):
            try:
                dumps(value, store)
                names[name] = value
            except Exception:  # too deep, a huge int, a cycle: the test side gets a handle
                names[name] = Ref(store(value))
    _send(wfd, dumps(("ready", names), store))
    _flush()
    while True:
        header = _read_exactly(rfd, 4)
        if header is None:
            return
        payload = _read_exactly(rfd, int.from_bytes(header, "big"))
        if payload is None:
            return
        try:
            op, ref, *rest = loads(payload, lookup)
            target = lookup(ref)
            handler = _OPS.get(op) if type(op) is str else None
            if handler is None:
                raise ValueError(f"unknown request {op!r}")
            result = handler(target, rest)
            try:
                reply = dumps(("ok", result), store)
            except ValueError:  # plain but nested too deeply: a handle instead
                reply = dumps(("ok", Ref(store(result))))
        except BaseException as err:  # the solution's own exceptions, SystemExit included
            reply = dumps(("err",) + _describe(err))
        _send(wfd, reply)
        _flush()


def main():
    mode, path = sys.argv[1], sys.argv[2]
    fds = [int(x) for x in sys.argv[3:5]]
    extra_path = sys.argv[5:]
    with open(path, encoding="utf-8", errors="replace") as f:
        source = f.read()
    sys.argv = [path]
    sys.path[:0] = extra_path
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    if mode == "script":
        exec(compile(source, path, "exec"), namespace)
        return
    rfd, wfd = fds
    try:
        exec(compile(source, path, "exec"), namespace)
    except BaseException as err:
        _send(wfd, dumps(("failed",) + _describe(err)))
        tb = err.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        err.__traceback__ = tb
        sys.__excepthook__(type(err), err, err.__traceback__)
        _flush()
        os._exit(1)
    _serve(namespace, rfd, wfd)
    _flush()
    os._exit(0)


if __name__ == "__main__":
    main()
