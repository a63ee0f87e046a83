"""Atomic writes: a reader (or a rerun after a kill, or after a power loss) sees the old file or directory or the
new one, never a fragment.

A file's text goes to a temporary file in the same directory, is flushed to disk, and is renamed over the
target; then the directory itself is synced so that the rename survives a power loss. A directory is written
under a temporary name, synced, and swapped in whole (`publish_dir`). `file_lock` serialises writers.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text))


def save_figure_atomic(figure, path: str | Path, **savefig_kwargs) -> None:
    """A matplotlib figure written like any other file: whole, or not at all."""
    write_atomic(path, lambda temporary: figure.savefig(temporary, **savefig_kwargs))


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write` the content to a temporary file beside `path` (same suffix, for writers that read it), sync it,
    rename it over `path`, sync the directory. Temporaries that killed writers of `path` left are deleted."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)
    for leftover in path.parent.glob(f".{glob.escape(path.stem)}.tmp-*{glob.escape(path.suffix)}"):
        if left_by_dead_process(leftover.name.removeprefix(f".{path.stem}.tmp-").split("-", 1)[0]):
            leftover.unlink(missing_ok=True)


def left_by_dead_process(pid: str) -> bool:
    """Whether a temporary whose name carries `pid` was left by a process that is gone (so it may be deleted; a
    live writer's are its own business)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def sync_directory(directory: str | Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(directory: str | Path) -> None:
    """fsync every file under `directory`, then each directory: all of it is on disk before it is published."""
    for root, _, files in os.walk(directory, topdown=False):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        sync_directory(root)


def publish_dir(temporary: str | Path, final: str | Path) -> None:
    """Move the complete directory `temporary` to `final`, replacing what is there so that at every instant
    `final` is either the old complete directory or the new one: the two are swapped in one step (Linux's
    `renameat2(RENAME_EXCHANGE)`) and the old one is deleted after. Where the swap is not available, the old
    directory is first renamed aside (a moment with no `final`, never a half-deleted one)."""
    temporary, final = Path(temporary), Path(final)
    sync_tree(temporary)
    if not final.exists():
        os.replace(temporary, final)
    elif _exchange(temporary, final):
        shutil.rmtree(temporary)  # now the old directory
    else:
        aside = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, aside)
        os.replace(temporary, final)
        shutil.rmtree(aside)
    sync_directory(final.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ≥ 3.15 with glibc ≥ 2.28); False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) for the block. `wait=False`: raise `BlockingIOError`
    at once if another process holds it. The lock goes with the process, so a killed holder frees it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
