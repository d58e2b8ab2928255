"""The two kinds of failure: a user's input that cannot be used, and everything else (a bug).

:class:`UserError` (and its kinds) is raised for bad input, params, data or a run
folder in the wrong state; the CLI shows its message as one line and exits 2. Any
other exception is a bug: the CLI shows its traceback and exits 1.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input, params or data; the message says what is wrong and what to do.

    A ``ValueError`` so that callers (and tests) that expect one keep working.
    """


class StageError(UserError):
    """A stage cannot run on this run folder; the message says why and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that the stage has already explained (what is kept, how to go on): the CLI adds nothing."""
