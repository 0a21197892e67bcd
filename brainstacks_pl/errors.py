"""The one error style of every ``brainstacks`` command.

A ``UserError`` is bad input that the user can fix (a flag, a file, a run directory): the
command prints it as one ``error: ...`` line naming the culprit and exits with status 2. Any
other exception is a bug and keeps its traceback. ``BRAINSTACKS_DEBUG=1`` (or ``--debug``)
shows the traceback of user errors too.
"""

from __future__ import annotations

__all__ = ["UserError", "StackFileError", "InferenceError", "USER_ERROR_EXIT"]

USER_ERROR_EXIT = 2
"""Exit status of a command that stopped on a user error (argparse's convention)."""


class UserError(Exception):
    """Bad input, reported as ``error: <message>`` and exit status 2."""


class StackFileError(UserError, ValueError):
    """A stack, basis or manifest file (or stack tensors) missing, corrupt, foreign or unsafe.

    Defined here rather than in ``storage`` so that the stack format (``layers/stack_format.py``),
    which ``storage`` reads, can raise it too.
    """


class InferenceError(UserError, ValueError):
    """A request that cannot be served (empty prompt, prompt longer than the context, no router,
    a domain without stacks...)."""
