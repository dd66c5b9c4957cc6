"""One writer per export directory: a lock beside it, and the leftovers of writers that were killed.

An export holds `<parent>/.<name>.lock` (an flock, so it is released by the kernel when the process dies, even
by SIGKILL) from the moment its `--out` is known until `build/latest` points at the finished export. A second
export to the same `--out` meanwhile is refused, never interleaved. Holding the lock, the export removes what
killed writers of the same `--out` left: their hidden `.<name>.partial-<pid>` (an export being written) and
`.<name>.replaced-<pid>` (an earlier export being swapped out) directories, once their process is gone.

Entry point: `with claim_out_dir(out): ...`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil

from ..errors import UserError

LEFTOVER_KINDS = ("partial", "replaced")


def hidden_sibling(out_dir: str, kind: str, pid: int | None = None) -> str:
    """<parent>/.<name>.<kind>[-<pid>]: where the writer of out_dir keeps its lock and its work in progress."""
    parent, name = os.path.split(os.path.abspath(out_dir))
    return os.path.join(parent, f".{name}.{kind}" + (f"-{pid}" if pid is not None else ""))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # alive, someone else's
        return True
    return True


def remove_leftovers(out_dir: str) -> list[str]:
    """Delete the partial and replaced directories of out_dir's writers that are no longer running."""
    removed = []
    for kind in LEFTOVER_KINDS:
        for path in glob.glob(glob.escape(hidden_sibling(out_dir, kind)) + "-*"):
            pid = path.rsplit("-", 1)[1]
            if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def not_writable(out_dir: str, parent: str, e: OSError) -> UserError:
    return UserError(f"--out {out_dir}: cannot write in {parent} ({e.strerror}); pass a path in a writable "
                     "directory")


def open_lock_file(out_dir: str) -> int:
    """Create out_dir's parent if need be and open the lock file in it (really writing: os.access says yes to
    root even where the file system says no)."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out {out_dir}: {parent} is a file, not a directory; pass a path in a writable directory")
    try:
        os.makedirs(parent, exist_ok=True)
        return os.open(hidden_sibling(out_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise not_writable(out_dir, parent, e) from None


@contextlib.contextmanager
def claim_out_dir(out_dir: str):
    """Hold out_dir's lock for the block; refuse at once if another export holds it. The lock file is removed
    on the way out (checked by inode on the way in, so a writer that removed it cannot let two in)."""
    lock_path = hidden_sibling(out_dir, "lock")
    while True:
        fd = open_lock_file(out_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise UserError(f"--out {out_dir}: another export is writing it now (lock {lock_path}); wait for it "
                            "to finish or pass another --out") from None
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)        # the holder before us removed this file as we opened it: take the new one
    try:
        remove_leftovers(out_dir)
        yield out_dir
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)
        os.close(fd)
