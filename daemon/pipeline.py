"""One stream whose receiving, hashing and writing overlap (SPEC §12).

The receiving thread fills a small ring of preallocated buffers (readinto, no allocation per
chunk); a second thread hashes each full buffer and writes it at its offset, starting writeback
as it goes. hashlib, recv and pwrite all release the GIL, so the two run on both cores.
"""
import queue
import threading

from .diskio import Writeback, pwrite_all

BUFFERS = 4
BUFFER_SIZE = 4 << 20
FILL = 1 << 20  # a buffer is handed over once it holds this much (or the body ended)


class Pipeline:
    """Buffers for the receiver, a hash-and-write thread behind it; `written` counts what is on disk."""

    def __init__(self, fd, offset, hasher, name="pipeline", size=None):
        self.fd = fd
        self.hasher = hasher
        self.written = offset      # bytes hashed and written (the part's clean resume point)
        self.error = None
        # Allocated on first use, no larger than the body: a 1 KiB file needs 1 KiB, and zeroing
        # 16 MiB per download was a sixth of the CPU of ingesting 1,000 small manifests (bench, ingest).
        self._size = BUFFER_SIZE if size is None else max(1, min(BUFFER_SIZE, size))
        self._buffers = [None] * BUFFERS
        self._free = queue.SimpleQueue()
        self._full = queue.SimpleQueue()
        for index in range(BUFFERS):
            self._free.put(index)
        # A body that fits one hand-over gains nothing from overlap: it is written here, without a
        # thread started and joined per download (small files in a burst, bench ingest).
        self._inline = size is not None and size <= FILL
        self._writeback = _NoWriteback() if self._inline else None  # the fsync right after writes it all
        self._thread = None
        if not self._inline:
            self._thread = threading.Thread(target=self._write_loop, name=name, daemon=True)
            self._thread.start()

    def take(self):
        """(index, view) of a free buffer; raises what the writer hit."""
        index = self._free.get()
        if self.error is not None:
            self._free.put(index)
            raise self.error
        if self._buffers[index] is None:
            self._buffers[index] = memoryview(bytearray(self._size))
        return index, self._buffers[index]

    def hand_over(self, index, count):
        """The first `count` bytes of buffer `index` are the next bytes of the file."""
        if count and self._inline:
            self._write(index, count)
            self._free.put(index)
        elif count:
            self._full.put((index, count))
        else:
            self._free.put(index)

    def finish(self):
        """Wait until everything handed over is hashed and written; raises what the writer hit."""
        self.abandon()
        if self.error is not None:
            raise self.error

    def abandon(self):
        """Let the writer finish what was handed over, then end it (safe to call twice)."""
        if self._inline:
            self._writeback.flush()
        elif self._thread.is_alive():
            self._full.put(None)
            self._thread.join()

    def _write_loop(self):
        self._writeback = Writeback(self.fd)
        try:
            while (item := self._full.get()) is not None:
                self._write(*item)
                self._free.put(item[0])
        finally:
            self._writeback.flush()

    def _write(self, index, count):
        if self.error is not None:
            return
        view = self._buffers[index][:count]
        try:
            pwrite_all(self.fd, view, self.written)  # before the hash: a failed write
            self.hasher.update(view)                 # leaves hash and `written` in step
            self._writeback.wrote(self.written, count)
            self.written += count
        except BaseException as exc:  # noqa: BLE001 - handed to the receiver
            self.error = exc


class _NoWriteback:
    """Writeback for a body written inline: nothing to start early, the caller's fsync follows at once."""

    def wrote(self, offset, n):
        pass

    def flush(self):
        pass
