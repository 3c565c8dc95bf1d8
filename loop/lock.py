"""One writer per run directory or series: an exclusive lock held for the whole command.

The lock is `flock` on a file in the directory. The kernel releases it when the holding
process dies, however it dies (SIGKILL included), so a lock left by a killed process is taken
over by the next invocation; the file keeps the holder's pid and start time for the message.
(flock is per host: two hosts sharing one directory over NFS are not kept apart.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class Locked(Exception):
    """Another live process holds the lock; nothing was written."""


class DirLock:
    def __init__(self, directory: str | Path, what: str):
        self.path = Path(directory) / ".lock"
        self.what = what
        self.fd: int | None = None
        self.took_over: dict | None = None  # the previous holder's record, when it had died

    def __enter__(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # as private as the files it guards
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
                if holder
                else "another process"
            )
            raise Locked(
                f"{self.path.parent} is in use by another alignloop process ({who}); "
                f"wait for it to finish, or stop it, then run again (never two writers on one {self.what})"
            ) from None
        previous = _read(fd)
        if previous.get("pid"):
            self.took_over = previous  # it held the lock and died without releasing the file
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no holder behind
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
