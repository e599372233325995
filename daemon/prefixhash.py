"""SHA-256 of a file written out of order (segments), without a second full read.

The hash covers the contiguous prefix [0, prefix). A writer hands over each piece right after
writing it: a piece that starts at the prefix is hashed from the writer's own buffer; a piece
ahead of the prefix is only noted, and hashed from the page cache (pread) once the prefix
reaches it. One thread hashes at a time; the others go on receiving.
"""
import hashlib
import os
import threading

from .segments import RangeSet

PREAD_SIZE = 1 << 20  # one buffer per hasher, reused (only one thread hashes at a time)


class PrefixHasher:
    """Hash of bytes [0, prefix) of the file open as `fd`; `feed` after every write."""

    def __init__(self, fd, hasher=None, prefix=0, ahead=()):
        self.fd = fd
        self.hasher = hasher or hashlib.sha256()
        self.prefix = prefix
        self._ahead = RangeSet(ahead)   # written but not hashed yet (all beyond the prefix)
        self._lock = threading.Lock()
        self._busy = False
        self.reread = 0                  # bytes hashed from the page cache (for the bench notes)
        self._buffer = None

    def feed(self, start, view):
        """`view` was just written at `start`; hash what the prefix can take now."""
        with self._lock:
            self._ahead.add(start, start + len(view))
            if self._busy:
                return  # the thread hashing now finds this piece in _ahead before it stops
            self._busy = True
        try:
            while True:
                with self._lock:
                    end = self._ahead.run_from(self.prefix)
                    if end is None:
                        self._busy = False
                        return
                    begin = self.prefix
                stop = self._hash_piece(begin, end, start, view)
                with self._lock:
                    first = self._ahead.spans[0]  # starts at the prefix: all of _ahead lies beyond it
                    self._ahead.spans[0:1] = [(stop, first[1])] if stop < first[1] else []
                    self.prefix = stop
        except BaseException:
            with self._lock:
                self._busy = False
            raise

    def _hash_piece(self, begin, end, start, view):
        """Hash from `begin` towards `end`: from the caller's buffer where it holds the bytes; returns the stop."""
        view_end = start + len(view)
        if start <= begin < view_end:
            stop = min(end, view_end)
            self.hasher.update(view[begin - start:stop - start])
            return stop
        stop = start if begin < start < end else end  # from disk up to the buffer, then from the buffer
        self._hash_from_disk(begin, stop)
        return stop

    def _hash_from_disk(self, begin, end):
        if self._buffer is None:
            self._buffer = memoryview(bytearray(PREAD_SIZE))
        pos = begin
        while pos < end:
            view = self._buffer[:min(PREAD_SIZE, end - pos)]
            got = os.preadv(self.fd, [view], pos)  # into the one buffer: no allocation per block
            if not got:
                raise OSError(f"the part file ends at byte {pos}, expected data up to {end}")
            self.hasher.update(view[:got])
            pos += got
            self.reread += got

    def hexdigest(self):
        return self.hasher.hexdigest()
