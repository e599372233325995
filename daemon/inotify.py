"""A bare inotify reader for one folder: names written or moved in, nothing grouped (Linux).

watchdog pairs every move-from with its move-to through a delayed queue it searches
linearly, so 1,000 renames into inbox/ cost it a quadratic scan on the intake's
core. The watcher only wants hints (its scans catch anything missed), so this
reads the kernel's events directly; elsewhere (or without libc) `open_hints`
returns None and the watcher falls back to watchdog.
"""
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import sys
import threading

log = logging.getLogger("daemon.inotify")

IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class InboxEvents:
    """A thread that puts the path of each file closed, created or moved into `folder` on `hints`."""

    def __init__(self, libc, folder, hints):
        self.folder = str(folder)
        self.hints = hints
        self._fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(self._fd, os.fsencode(self.folder), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            code = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(code, os.strerror(code), self.folder)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="inbox-events", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=3)

    def join(self, timeout=None):
        self._thread.join(timeout)

    def is_alive(self):
        return self._thread.is_alive()

    def _run(self):
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(self._fd, 1 << 16)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EINTR):
                        continue
                    raise
                self._parse(data)
        except Exception:  # the watcher's periodic scan still takes every file
            log.exception("inbox events stopped; the inbox is still scanned every few seconds")
        finally:
            for fd in (self._fd, self._stop_r, self._stop_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _parse(self, data):
        offset = 0
        while offset + _HEADER.size <= len(data):
            _, mask, _, length = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            name = data[start:start + length].split(b"\0", 1)[0]
            offset = start + length
            if mask & IN_Q_OVERFLOW:
                self.hints.put("")  # nothing to name: a wake-up; the next scan finds what was lost
            elif name:
                self.hints.put(os.path.join(self.folder, os.fsdecode(name)))


def open_hints(folder, hints):
    """InboxEvents for `folder`, or None where inotify is not to be had."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return InboxEvents(libc, folder, hints)
    except (OSError, AttributeError) as exc:
        log.warning("inotify unavailable for %s (%s); using watchdog", folder, exc)
        return None
