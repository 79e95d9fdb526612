"""One writer per artifact: an exclusive lock (the ``filelock`` package, ``flock`` on POSIX) held while a stage
builds ``<out>.partial`` and promotes it, and while ``devide run`` works in a pipeline's folder.

The lock file sits beside the artifact (``.<name>.lock``) and holds the holder's PID and host, written by
filelock's ``on_acquired`` hook, so a second run can say who holds it. The kernel drops a ``flock`` when its
process dies, so a killed run never leaves a stale lock behind. By default a second run does not wait: it
fails at once with one line naming the holder (the CLI exits 2); ``DEVIDE_LOCK_WAIT=SECONDS`` makes it wait.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_WAIT_ENV = "DEVIDE_LOCK_WAIT"


class LockHeldError(RuntimeError):
    """Another run holds the lock; the message (one line) names its PID."""


def lock_path(target: Path) -> Path:
    """``.<name>.lock`` beside ``target`` (an artifact folder or a pipeline's work folder)."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _write_holder(fd: int) -> None:
    """filelock's ``on_acquired`` hook: record who holds the lock in the (still locked) file."""
    text = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat(timespec='seconds')}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as the holder wrote it ("pid N on HOST since T")."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "pid unknown (the holder is still starting)"


def default_wait() -> float:
    """Seconds to wait for a held lock: ``DEVIDE_LOCK_WAIT`` (0, the default: fail at once)."""
    try:
        return max(0.0, float(os.environ.get(LOCK_WAIT_ENV, "0") or 0))
    except ValueError:
        return 0.0


@contextmanager
def exclusive(target: Path, what: str, wait: float | None = None) -> Iterator[Path]:
    """Hold the lock of ``target`` for the block; :class:`LockHeldError` when another process holds it after
    ``wait`` seconds (default :func:`default_wait`). ``what`` names the target in the error."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=default_wait() if wait is None else wait, preserve_lock_file=True,
                    on_acquired=_write_holder)
    try:
        lock.acquire()
    except Timeout:
        raise LockHeldError(f"{what} is locked by another run ({holder(path)}); wait for it to finish, or set "
                            f"{LOCK_WAIT_ENV}=SECONDS to wait") from None
    try:
        yield path
    finally:
        lock.release()
