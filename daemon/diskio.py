"""Writing a part file fast: small write() slices, and dirty pages sent to disk while downloading.

`sync_file_range(SYNC_FILE_RANGE_WRITE)` starts writeback of what was just written without
waiting for it, so the fsync before publication finds little left (SPEC §12). Where the call is
missing (not Linux, no libc), `Writeback` falls back to doing nothing; the final fsync still runs.
"""
import ctypes
import ctypes.util
import os

WRITE_SLICE = 256 << 10    # small write() calls: much cheaper page-cache writes (research/performance.md §1)
WRITEBACK_EVERY = 32 << 20  # start writeback after this many new bytes
SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load_sync_file_range()


def pwrite_all(fd, view, offset):
    """Write all of `view` at `offset` in WRITE_SLICE pieces (pwrite may write less than asked)."""
    done = 0
    size = len(view)
    while done < size:
        done += pwrite(fd, view[done:done + WRITE_SLICE], offset + done)


pwrite = os.pwrite  # the one place part bytes reach the disk (tests inject a full disk here)


class Writeback:
    """Starts writeback of a file's new bytes every WRITEBACK_EVERY bytes (one per writer thread)."""

    def __init__(self, fd):
        self.fd = fd
        self._pending_from = None
        self._pending = 0

    def wrote(self, offset, n):
        if _sync_file_range is None:
            return
        if self._pending_from is None or offset != self._pending_from + self._pending:
            self.flush()
            self._pending_from = offset
        self._pending += n
        if self._pending >= WRITEBACK_EVERY:
            self.flush()

    def flush(self):
        if _sync_file_range is not None and self._pending:
            _sync_file_range(self.fd, self._pending_from, self._pending, SYNC_FILE_RANGE_WRITE)
        self._pending_from = None if not self._pending else self._pending_from + self._pending
        self._pending = 0
