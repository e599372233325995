"""SHA256 of whole files in `hash_threads` threads, streaming with page-cache advice.

hashlib releases the GIL on large updates, so threads hash in parallel. Each
file gets SEQUENTIAL + WILLNEED read-ahead advice; pages it brought into the
cache are dropped behind the reader (DONTNEED), so hashing a 500 GB library
does not evict what the web UI has loaded. A file whose first block was
already cached is in use by someone: its pages are left alone.
"""
import concurrent.futures
import hashlib
import os
import threading

CHUNK = 4 << 20          # large reads: few syscalls, and hashlib drops the GIL per update
DROP_EVERY = 64 << 20    # give back the pages behind the reader this often

_ADVICE = hasattr(os, "posix_fadvise")
_local = threading.local()


def _advise(fd, offset, length, advice):
    if _ADVICE:
        try:
            os.posix_fadvise(fd, offset, length, advice)
        except OSError:  # some file systems (FUSE, tmpfs variants) refuse advice: harmless
            pass


def _was_cached(fd, buffer):
    """Whether the first block is already in the page cache (RWF_NOWAIT reads only cached data)."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    try:
        return os.preadv(fd, [memoryview(buffer)[:4096]], 0, flag) > 0
    except (BlockingIOError, OSError):
        return False


def sha256_file(path, on_bytes=None, buffer=None):
    """Hex SHA256 of a file; `on_bytes(n)` is called as bytes are read. Raises OSError."""
    if buffer is None:
        buffer = getattr(_local, "buffer", None) or bytearray(CHUNK)
        _local.buffer = buffer  # one read buffer per hashing thread, not one per file
    view = memoryview(buffer)
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        cached = _was_cached(fd, buffer)
        _advise(fd, 0, 0, getattr(os, "POSIX_FADV_SEQUENTIAL", 0))
        _advise(fd, 0, 0, getattr(os, "POSIX_FADV_WILLNEED", 0))
        done = dropped = 0
        while True:
            n = os.readv(fd, [view])
            if not n:
                break
            digest.update(view[:n])
            done += n
            if on_bytes:
                on_bytes(n)
            if not cached and done - dropped >= DROP_EVERY:
                _advise(fd, dropped, done - dropped, getattr(os, "POSIX_FADV_DONTNEED", 0))
                dropped = done
        if not cached:
            _advise(fd, 0, 0, getattr(os, "POSIX_FADV_DONTNEED", 0))
    finally:
        os.close(fd)
    return digest.hexdigest()


def hash_many(paths, threads, on_bytes=None, stop=None):
    """Yield (path, sha256 or None, error or None) for every path, hashed in `threads` threads."""
    def one(path):
        if stop is not None and stop.is_set():
            return path, None, "scan stopped"
        try:
            return path, sha256_file(path, on_bytes), None
        except OSError as exc:
            return path, None, exc.strerror or str(exc)

    if threads <= 1:
        for path in paths:
            yield one(path)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hash") as pool:
        yield from pool.map(one, paths)
