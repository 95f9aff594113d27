"""Stop signals: a run that is asked to stop (SIGTERM from a scheduler, Ctrl-C, SIGUSR1) keeps its work and says so.

:func:`handle_stop_signals` installs the handlers for a whole run. A signal received while work that can save
itself is under way (:func:`deferred`: a fit, the teacher labelling texts) is remembered: that work checks
:func:`requested` at its next safe point (the end of an optimizer step, the end of a shard), saves where it is and
raises :class:`Stopped`. A signal received anywhere else raises :class:`Stopped` at once: nothing is half-written
there (caches are written atomically). A second signal ends the process at once (the signal's default action).

:class:`Stopped` is a ``SystemExit`` with the shell's status for the signal (128 + its number: 143 for SIGTERM,
130 for SIGINT), so a scheduler sees that the job did not finish, and ``except Exception`` blocks let it pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

_requested: int | None = None  # the first stop signal received in this run
_deferring = 0  # > 0 while work that saves itself at safe points runs
_installed: dict[int, object] = {}  # signal -> the handler it had before handle_stop_signals
_hard_stop: list[Callable[[], None]] = []  # called before the process ends on a second signal (DDP children)


class Stopped(SystemExit):
    """The run stopped on a signal, after saving what it could; ``message`` says where and how to continue."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.message = int(signum), message


def signal_numbers(names: Iterable[str | int]) -> list[int]:
    """``["SIGTERM", "INT", 10]`` -> signal numbers; an unknown name is a clear error."""
    from speedtrain.errors import UserError

    out = []
    for name in names:
        if isinstance(name, int):
            out.append(signal.Signals(name).value)
            continue
        key = str(name).upper()
        key = key if key.startswith("SIG") else f"SIG{key}"
        if not hasattr(signal, key) or key in ("SIGKILL", "SIGSTOP"):
            raise UserError(f"callbacks.checkpoint.signals: {name!r} is not a signal this process can catch; use "
                            f"names such as {list(DEFAULT_SIGNALS)}")
        out.append(int(getattr(signal, key)))
    return out


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def requested() -> int | None:
    """The stop signal received (its number), or None."""
    return _requested


def _handler(signum: int, frame) -> None:
    global _requested
    if _requested is not None:  # the second signal: stop now
        log.warning("Received %s again: stopping at once, without saving", signal_name(signum))
        for kill in list(_hard_stop):
            with contextlib.suppress(Exception):
                kill()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _requested = signum
    if _deferring:
        log.warning("Received %s: saving at the end of this step, then stopping (send it again to stop at once)",
                    signal_name(signum))
        return
    raise Stopped(signum, f"stopped by {signal_name(signum)} outside training, where nothing is saved on a signal")


def install(signals: Iterable[str | int]) -> None:
    """Route ``signals`` to the stop handler (main thread only; elsewhere signals cannot be set: a no-op)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signal_numbers(signals):
        previous = signal.signal(signum, _handler)
        if previous is not _handler:
            _installed.setdefault(signum, previous)


@contextlib.contextmanager
def handle_stop_signals(signals: Iterable[str | int] = DEFAULT_SIGNALS) -> Iterator[None]:
    """Within: ``signals`` stop the run as this module says; after: the handlers are restored, the request cleared.

    Lightning's own handlers (its SIGTERM handler ends a fit with exit status 0; under SLURM its SIGUSR1 handler saves
    in the middle of a step) are not installed where these are: Lightning adds its SLURM handler only to a signal
    that has none, and :class:`~speedtrain.callbacks.preemption.PreemptionCheckpoint` takes SIGTERM back.
    """
    global _requested
    numbers = signal_numbers(signals)
    outer = dict(_installed)
    _installed.clear()
    _requested = None
    try:
        install(numbers)
        yield
    finally:
        for signum, previous in _installed.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        _installed.clear()
        _installed.update(outer)
        _requested = None
        _hard_stop.clear()


def defer() -> None:
    """From now on a stop signal is remembered for the running work to act on at its next safe point (it calls
    :func:`requested`), until :func:`undefer`. Calls nest."""
    global _deferring
    _deferring += 1


def undefer() -> None:
    global _deferring
    _deferring = max(0, _deferring - 1)


def check(where: str = "after that step finished") -> None:
    """Raise :class:`Stopped` if a stop signal was received (outside a deferred block it already raised)."""
    if _requested is not None:
        raise Stopped(_requested, f"stopped by {signal_name(_requested)} {where}")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """:func:`defer` within the block; when it ends normally with a signal pending, :func:`check` raises."""
    defer()
    try:
        yield
    finally:
        undefer()
    if not _deferring:
        check()


def add_hard_stop(kill: Callable[[], None]) -> None:
    """``kill()`` runs before a second signal ends this process (e.g. to end DDP's child processes)."""
    _hard_stop.append(kill)


def remove_hard_stop(kill: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _hard_stop.remove(kill)


def report(stopped: Stopped) -> None:
    """The one line a stopped run ends with: on stderr and in the run's log."""
    log.warning("%s", stopped.message)
    print(f"speedtrain: {stopped.message}", file=sys.stderr, flush=True)
