"""``get_executor``: an executor from a configuration value (what a reward's ``executor`` kwarg holds)."""

from __future__ import annotations

import importlib
import json
import threading
from typing import Any

from brainstacks_pl.sandbox.base import Executor
from brainstacks_pl.sandbox.local import LocalIsolatedExecutor, UnisolatedExecutor
from brainstacks_pl.sandbox.remote import RemoteExecutor

__all__ = ["get_executor"]

KINDS = {
    "local": LocalIsolatedExecutor,
    "isolated": LocalIsolatedExecutor,
    "unisolated": UnisolatedExecutor,
    "remote": RemoteExecutor,
}
_cache: dict[str, Executor] = {}
_lock = threading.Lock()


def get_executor(spec: Any = None) -> Executor:
    """The executor a setting names, one instance per distinct setting (so a probe runs once):

    - ``None`` / ``"local"``: ``LocalIsolatedExecutor()``, the default;
    - ``"unisolated"``: ``UnisolatedExecutor()`` (explicit opt-in; warns on every run);
    - ``"http://host:port"``: ``RemoteExecutor(url=...)``;
    - ``{kind: local | unisolated | remote, **kwargs}``: that class with those arguments;
    - ``{class_path: "pkg.module.Class", init_args: {...}}``: any ``Executor`` subclass;
    - an ``Executor`` instance: itself.
    """
    if isinstance(spec, Executor):
        return spec
    if spec in (None, "isolated", {}, {"kind": "local"}, {"kind": "isolated"}):
        spec = "local"
    key = json.dumps(spec, sort_keys=True, default=repr)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(spec)
        return _cache[key]


def _build(spec: Any) -> Executor:
    if isinstance(spec, str):
        if spec.startswith(("http://", "https://")):
            return RemoteExecutor(url=spec)
        if spec in KINDS and spec != "remote":
            return KINDS[spec]()
        raise ValueError(
            f"unknown executor {spec!r}: use local, unisolated, an http(s) "
            f"URL, {{kind: ..., ...}} or {{class_path: ..., init_args: ...}}"
        )
    if isinstance(spec, dict):
        spec = dict(spec)
        if "class_path" in spec:
            module_name, _, attr = str(spec.pop("class_path")).rpartition(".")
            cls = getattr(importlib.import_module(module_name), attr)
            if not (isinstance(cls, type) and issubclass(cls, Executor)):
                raise ValueError(f"{module_name}.{attr} is not an Executor subclass")
            return cls(**dict(spec.pop("init_args", {}) or {}))
        kind = spec.pop("kind", "local")
        if kind not in KINDS:
            raise ValueError(f"unknown executor kind {kind!r}; one of {sorted(KINDS)}")
        return KINDS[kind](**spec)
    raise ValueError(f"cannot make an executor from {spec!r}")
