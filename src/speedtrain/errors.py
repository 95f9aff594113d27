"""User errors: one clear message naming the value and the fix, and a non-zero exit.

Library code raises :class:`UserError` (a ``ValueError``) for bad input; the entry points wrap their work in
:func:`exit_on_user_error`, which prints the message alone (no traceback) and exits with
:data:`USER_ERROR_EXIT_CODE`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from omegaconf.errors import MissingMandatoryValue

USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
    """Bad input from the user: a config value, a data file, a column. The message says what and how to fix it."""


def find_user_error(err: BaseException) -> str | None:
    """The user-facing message in ``err`` or its causes (Hydra's ``instantiate`` wraps what targets raise)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UserError):
            return str(err)
        if isinstance(err, MissingMandatoryValue):
            key = getattr(err, "full_key", None) or "?"
            return f"config value '{key}' is required but not set; pass it on the command line, e.g. {key}=<value>"
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a :class:`UserError` (or a missing mandatory config value) into one line on stderr and exit 2."""
    try:
        yield
    except Exception as err:
        message = find_user_error(err)
        if message is None:
            raise
        print(f"speedtrain: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
