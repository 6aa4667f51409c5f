"""Outputs moved into place together, and one run at a time per output.

`replace_together` moves every staged file of a run onto its destination, all or none;
`output_lock` claims an output for the run writing it, so a second run is refused instead of
racing the first. Both name their files like `atomic`'s temporaries and clean up after killed
processes the same way.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import _UMASK, HOST_TAG, name_tag, process_alive, temporary_sibling

log = logging.getLogger(__name__)


class OutputBusyError(OSError):
    """Another live run holds the lock of an output (see `output_lock`)."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        super().__init__(f"{path} is being written by {owner}")


def _lock_path(dst: Path) -> Path:
    return dst.parent / f".{name_tag(dst)}.lock"


def _describe_owner(text: str) -> tuple[str, bool]:
    """("process N on this machine" / "a run on another machine", stale?) from a lock's `pid-host`."""
    match = re.fullmatch(r"(\d+)-([0-9a-f]{6})", text.strip())
    if match is None:
        return "another run", False  # being written this instant, or not ours: never taken over
    pid, host = int(match.group(1)), match.group(2)
    if host != HOST_TAG:
        return f"a run on another machine (process {pid})", False
    return f"another run (process {pid})", not process_alive(pid)


def _claim(lock: Path, content: str) -> bool:
    """Create `lock` holding `content`, atomically (a hard link of a finished file); False if it exists."""
    try:
        tmp = temporary_sibling(lock)
    except OSError:
        return _claim_plain(lock, content)
    try:
        tmp.write_text(content)
        try:
            os.link(tmp, lock)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or Windows file systems)
            return _claim_plain(lock, content)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _claim_plain(lock: Path, content: str) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    return True


@contextmanager
def output_lock(*outputs: Path | None) -> Iterator[None]:
    """Hold `.<name>.lock` beside each output while a run writes it.

    A second run for the same output finds the lock and is refused (`OutputBusyError`) instead
    of racing the first (the last writer would win). A lock left by a killed process of this
    machine is taken over; one of a live process, of another machine, or unreadable is not.
    Folders that cannot be written are skipped (the output checks report them).
    """
    mine = f"{os.getpid()}-{HOST_TAG}"
    held: list[Path] = []
    try:
        for dst in dict.fromkeys(Path(p) for p in outputs if p is not None):
            lock = _lock_path(dst)
            if not os.access(lock.parent, os.W_OK):
                continue
            for _ in range(3):
                if _claim(lock, mine):
                    held.append(lock)
                    break
                try:
                    owner, stale = _describe_owner(lock.read_text()[:64])
                except OSError:
                    continue  # released meanwhile: try again
                if not stale:
                    raise OutputBusyError(dst, owner)
                log.info("%s: removed the lock of a run that was killed", lock)
                lock.unlink(missing_ok=True)
            else:
                raise OutputBusyError(dst, "another run")
        yield
    finally:
        for lock in held:
            try:
                if lock.read_text() == mine:
                    lock.unlink()
            except OSError:
                pass


def replace_together(moves: list[tuple[Path, Path]]) -> None:
    """Move each staged file onto its destination: all of them, or none.

    Every destination already there is first hard-linked to a backup name beside it (copied
    where the file system has no hard links), so one that cannot be replaced (immutable,
    append-only, locked, not ours) fails before any output changed. Then each file is renamed
    into place, each rename atomic; if one fails, those already moved are put back from their
    backups. The backups are removed at the end.

    Raises:
        OSError: with `filename` the destination that could not be replaced; every
            destination holds what it held before.
    """
    backups: dict[Path, Path] = {}
    try:
        for _, dst in moves:
            if os.path.lexists(dst):
                backups[dst] = _backup(dst)
        done: list[Path] = []
        try:
            for src, dst in moves:
                try:
                    os.replace(src, dst)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, str(dst)) from None
                done.append(dst)
        except BaseException:
            for dst in reversed(done):
                if dst in backups:
                    os.replace(backups.pop(dst), dst)
                else:
                    os.unlink(dst)
            raise
    finally:
        for backup in backups.values():
            try:
                backup.unlink()
            except OSError:
                pass


def _backup(dst: Path) -> Path:
    """A second name for `dst`'s current content, beside it (`.<name>.<pid>-<host>.<random>.old`)."""
    backup = temporary_sibling(dst, ".old")
    try:
        backup.unlink()
        try:
            os.link(dst, backup)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise OSError(exc.errno, exc.strerror, str(dst)) from None
            shutil.copy2(dst, backup)  # no hard links here: a real copy
            with open(dst, "r+b"):  # and the original must be writable to be replaced
                pass
    except BaseException:
        backup.unlink(missing_ok=True)
        raise
    return backup
