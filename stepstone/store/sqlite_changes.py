"""How a SQLite store learns that something was committed, by any process, without a query.

SQLite has no notifications, and a worker must notice instances created and events sent
by other processes (a web app with `worker=False`, say). Two cheap signals:

- `CommitWatch` reads the header of the WAL index, which every commit changes: a look
  that finds it unchanged can skip its query, and the thread hop that goes with it.
- `WriteWatch` has Linux tell the event loop when the write-ahead log is written
  (inotify). A worker then sleeps while nothing is committed anywhere, instead of
  polling a few times a second. Elsewhere it does not start, and workers poll.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable

_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
"""The watch is gone (the file was deleted): nothing more will be reported."""
_EVENT = struct.Struct("iIII")
"""inotify's struct inotify_event before its name: wd, mask, cookie, len."""


class CommitWatch:
    """Tells, at the cost of one read of 48 bytes, whether anything may have been committed
    to the file between two looks, by any connection of any process.

    It reads the header of the WAL index (the -shm file), which every commit changes (it
    holds the last frame's number and checksum) and which readers themselves read without
    a lock: https://www.sqlite.org/walformat.html#the_wal_index_header. A torn read looks
    like a change.
    """

    def __init__(self, path: str) -> None:
        self._path = path + "-shm"
        self._fd: int | None = None

    def header(self) -> bytes | None:
        """The header as it is now; None if it cannot be read (then assume a change)."""
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
            return os.pread(self._fd, 48, 0)
        except OSError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class WriteWatch:
    """Calls `callback` on the event loop when the file at `path` is written, by any process
    on this machine, at most once per `spacing` seconds (writes in between are reported
    together, at the end of the spacing). Linux only: `start` answers whether it watches.

    While writes keep coming, the file descriptor is left alone between two calls, so a
    busy store pays one wakeup per `spacing`, not one per commit.
    """

    def __init__(self, path: str, callback: Callable[[], None], *, spacing: float) -> None:
        self._path = path
        self._callback = callback
        self._spacing = spacing
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last = float("-inf")
        """loop.time() of the last call."""
        self._due: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        """Whether writes are still reported (False once the file was deleted, or if closed)."""
        return self._fd is not None

    def start(self) -> bool:
        """Watch from now on; False (nothing done) where inotify or the file is missing."""
        fd = _inotify_watch(self._path)
        if fd is None:
            return False
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._written)
        return True

    def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
        self._fd = None

    def _written(self) -> None:
        assert self._fd is not None and self._loop is not None
        self._loop.remove_reader(self._fd)  # quiet until the call, which drains what came
        self._due = self._loop.call_at(max(self._loop.time(), self._last + self._spacing), self._report)

    def _report(self) -> None:
        assert self._fd is not None and self._loop is not None
        self._due = None
        self._last = self._loop.time()
        if self._drain():
            self._loop.add_reader(self._fd, self._written)
        else:
            self.close()
        self._callback()

    def _drain(self) -> bool:
        """Read the events that came; False if the watch ended (IN_IGNORED)."""
        assert self._fd is not None
        alive = True
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                return alive
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                alive = alive and not mask & _IN_IGNORED
                offset += _EVENT.size + length


def _inotify_watch(path: str) -> int | None:
    """A non-blocking inotify descriptor watching `path` for writes; None if there is none."""
    import ctypes  # here: only a SQLite worker needs it, and importing it costs every start

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):  # not Linux
        return None
    init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
    add_watch.argtypes, add_watch.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:  # out of inotify instances (fs.inotify.max_user_instances)
        return None
    if add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        os.close(fd)
        return None
    return int(fd)
