"""Who may write a results store, and how: claim owners (``host:pid``) and whether they are
still alive, the journal mode a file system allows (``wal`` or ``shared``), and the directory
lock that guards every write transaction in ``shared`` mode. The store's design is described
in :mod:`granularity.sweeps.store`."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError

LOCK_STALE_S = 30.0  # a write lock held this long belongs to a dead process (transactions take ms)
LOCK_WAIT_S = 120.0
STORE_MODES = ("auto", "wal", "shared")
# file systems where SQLite's WAL mode is unsafe (no shared memory across machines)
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "fuse.ceph",
              "glusterfs", "fuse.glusterfs", "9p", "afs", "panfs", "wekafs", "fuse.sshfs", "fuse.s3fs")
HEARTBEAT_S = 5.0  # a running worker refreshes its claim this often
STALE_S = 60.0  # a claim not refreshed for this long belongs to a lost worker (another host, or pid reused)


def owner_id(pid: int | None = None) -> str:
    """The claim owner of process ``pid`` (default: this one) on this host."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process whose parent died too may linger as a zombie: it is dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(owner: str | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Is the worker holding a claim still at work?"""
    if not owner:
        return False
    now = time.time() if now is None else now
    if heartbeat is None or now - heartbeat > STALE_S:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    return True


def filesystem_type(path: str | Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (the longest mount point of ``/proc/mounts``
    above it), or None where that cannot be told (not Linux)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def resolve_store_mode(mode: str, root: str | Path) -> str:
    """``auto`` -> ``shared`` on a network file system, else ``wal``."""
    if mode not in STORE_MODES:
        raise GranularityError(f"The '--store-mode' option must be one of {', '.join(STORE_MODES)}. Got {mode!r} instead.")
    if mode != "auto":
        return mode
    fs = filesystem_type(root)
    return "shared" if fs is not None and fs.lower() in NETWORK_FS else "wal"


class DirLock:
    """A lock that works on network file systems: ``mkdir`` of a directory (atomic there), held
    for one short transaction. A lock older than ``stale_s`` is broken (its holder died)."""

    def __init__(self, path: Path, stale_s: float = LOCK_STALE_S, wait_s: float = LOCK_WAIT_S):
        self.path, self.stale_s, self.wait_s = Path(path), stale_s, wait_s

    def __enter__(self) -> DirLock:
        deadline = time.monotonic() + self.wait_s
        delay = 0.001
        while True:
            try:
                os.mkdir(self.path)
                return self
            except FileExistsError:
                self._break_if_stale()
            if time.monotonic() > deadline:
                raise GranularityError(
                    f"The results store lock {str(self.path)!r} has been held for over {self.wait_s:.0f} s; if no sweep "
                    "is writing this store, delete it."
                )
            time.sleep(delay)
            delay = min(0.05, delay * 2)

    def _break_if_stale(self) -> None:
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        if age > self.stale_s:
            # rename first: of two processes breaking it at once, only one succeeds
            grave = self.path.with_name(f"{self.path.name}.stale-{owner_id()}-{time.time_ns()}")
            try:
                os.rename(self.path, grave)
                os.rmdir(grave)
            except OSError:
                pass

    def __exit__(self, *exc: Any) -> None:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:  # broken as stale by another process: nothing to release
            pass


@contextmanager
def _nolock() -> Iterator[None]:
    yield
