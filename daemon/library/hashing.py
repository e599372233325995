"""SHA256 of whole files in `hash_threads` threads, streaming with page-cache advice.

hashlib releases the GIL on large updates, so threads hash in parallel. Each
file gets SEQUENTIAL + WILLNEED read-ahead advice; pages it brought into the
cache are dropped behind the reader (DONTNEED), so hashing a 500 GB library
does not evict what the web UI has loaded. A file whose first block was
already cached is in use by someone: its pages are left alone.
"""
import concurrent.futures
import errno
import hashlib
import os
import stat
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


class NotTheFileSeen(OSError):
    """What is at the path now is not the regular file the walk found there."""


def open_seen(path, seen=None):
    """An fd of `path` for reading, only if it is a regular file and (with `seen`, a walk.Found) the very
    file the walk saw: same device and inode. O_NONBLOCK, so a FIFO or device swapped in since cannot
    block the open; O_NOFOLLOW unless the walk itself followed a link there. Raises OSError."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if seen is not None and not seen.linked:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotTheFileSeen(errno.EINVAL, "not a regular file (a FIFO, socket or device was put there)")
        if seen is not None and (info.st_dev, info.st_ino) != (seen.device, seen.inode):
            raise NotTheFileSeen(errno.ESTALE, "replaced by another file while the scan ran; scan again")
    except BaseException:
        os.close(fd)
        raise
    return fd


def sha256_file(path, on_bytes=None, buffer=None, seen=None):
    """Hex SHA256 of a file (opened by open_seen); `on_bytes(n)` is called as bytes are read. Raises OSError."""
    if buffer is None:
        buffer = getattr(_local, "buffer", None) or bytearray(CHUNK)
        _local.buffer = buffer  # one read buffer per hashing thread, not one per file
    view = memoryview(buffer)
    digest = hashlib.sha256()
    try:
        fd = open_seen(path, seen)
    except OSError as exc:
        if exc.errno == errno.ELOOP and seen is not None:  # O_NOFOLLOW met a link put there after the walk
            raise NotTheFileSeen(errno.ESTALE, "replaced by a link while the scan ran; scan again") from None
        raise
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


def hash_many(found, threads, on_bytes=None, stop=None):
    """Yield (path, sha256 or None, error or None) for every walk.Found, hashed in `threads` threads."""
    def one(seen):
        if stop is not None and stop.is_set():
            return seen.path, None, "scan stopped"
        try:
            return seen.path, sha256_file(seen.path, on_bytes, seen=seen), None
        except OSError as exc:
            return seen.path, None, exc.strerror or str(exc)

    if threads <= 1:
        for seen in found:
            yield one(seen)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hash") as pool:
        yield from pool.map(one, found)
