"""Small files that appear atomically and never through a link: a new file written beside its
target and renamed or linked into place (`write_new`), a copy that never replaces a file (`copy_new`)."""
import os
import shutil
import threading
from pathlib import Path

from .errors import FileInTheWay
from .filenames import fit_name
from .throttle import READ_SIZE

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def file_in_the_way(target):
    return FileInTheWay(f"a different file already exists at {target}; move it away or choose another "
                        "filename, then retry")


def copy_new(source, target):
    """A copy of `source` at `target` for file systems without hard links; never replaces a file there."""
    target = Path(target)
    tmp = target.with_name(temp_name(target.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, READ_SIZE)
        try:
            os.link(tmp, target, follow_symlinks=False)
        except FileExistsError:
            raise file_in_the_way(target) from None
        except OSError:  # no hard links here either: check, then rename
            if os.path.lexists(target):
                raise file_in_the_way(target) from None
            os.rename(tmp, target)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def temp_name(name):
    """A hidden temp name beside `name`, unique to this thread, within the 255-byte limit."""
    return fit_name("." + name, f".{os.getpid()}.{threading.get_ident() % 10**6}.tmp")


def write_new(target, data, replace=True):
    """Write `data` to `target` atomically through a temp file beside it, created new (O_EXCL) and
    never through a link (O_NOFOLLOW): a link planted in the folder cannot redirect the write.
    With `replace` False an existing `target` is kept (FileExistsError)."""
    target = Path(target)
    tmp = target.with_name(temp_name(target.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if replace:
            os.replace(tmp, target)  # rename replaces a link at `target` itself, never what it points to
        else:
            os.link(tmp, target, follow_symlinks=False)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
