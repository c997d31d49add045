"""The plugin's user-facing error: a message that names the case, the problem and the fix."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from types import TracebackType

#: exit status of every refused input, in ``nnunet-fm`` and, through :func:`install_excepthook`, in nnU-Net's
#: own commands (argparse's usage errors exit with 2 too)
EXIT_BAD_INPUT = 2


class UserInputError(ValueError):
    """Bad input from the user (files, plans, options). The CLI prints it without a traceback."""


def report(exc: UserInputError) -> int:
    """Print ``exc`` the way every plugin command does (one ``nnunet-fm: error:`` block on stderr); the exit code."""
    print(f"nnunet-fm: error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None, previous: Callable
) -> None:
    """A :class:`UserInputError` nobody caught (in ``nnUNetv2_train``): the message, no traceback, exit 2."""
    if not issubclass(exc_type, UserInputError) or hasattr(sys, "ps1") or sys.flags.interactive:
        previous(exc_type, exc, traceback)
        return
    report(exc)
    # Python exits with 1 after an uncaught exception and offers no way to change that; run the interpreter's
    # exit handlers (multiprocessing's worker clean-up, logging) as a normal exit would, then exit with 2
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_BAD_INPUT)


def install_excepthook() -> None:
    """Make nnU-Net's commands (which import the trainers) report the plugin's errors like ``nnunet-fm`` does.

    Idempotent; an interactive session keeps its tracebacks.
    """
    if getattr(sys.excepthook, "nnunet_fm", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
        _excepthook(exc_type, exc, traceback, previous)

    hook.nnunet_fm = True
    sys.excepthook = hook
