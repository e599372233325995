"""Find model files under the library roots: each real folder once, no loops, no writes."""
import operator
import os
import stat
from typing import NamedTuple

from .sidecars_in import SUFFIXES, has_any

SKIP_DIRS = frozenset((".replaced", ".quarantine"))
PART_SUFFIX = ".part"
_NAME = operator.attrgetter("name")


class Found(NamedTuple):  # a tuple: 20,000 of them are made per rescan
    path: str
    root: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    linked: bool = False  # reached through a symlink: the hasher may follow it (and checks the inode)
    sidecars: bool = False  # a peer's sidecar lies beside it (seen in the folder listing: no extra stat)

    @property
    def key(self):
        return (self.device, self.inode)


def _sidecar_stems(names):
    """The stems that have a sidecar among a folder's names (one pass; most folders have none)."""
    stems = set()
    for name in names:
        if name.endswith(SUFFIXES):
            stems.update(name[:-len(s)] for s in SUFFIXES if name.endswith(s))
    return stems


def is_model_name(name, extensions):
    lower = name.lower()
    return not lower.endswith(PART_SUFFIX) and os.path.splitext(lower)[1] in extensions


def _error(errors, path, exc):
    errors.append({"path": str(path), "error": exc.strerror or str(exc)})


def walk(starts, extensions, errors):
    """Yield a Found for every model file under each (root, start) pair.

    Symlinked folders and files are followed; a folder reached twice (a second
    link to it, a link loop, overlapping roots) is read only the first time, by
    (device, inode). Folders that cannot be read go to `errors`.
    """
    seen = set()
    for root, start in starts:
        try:
            info = os.stat(start)
        except OSError as exc:
            _error(errors, start, exc)
            continue
        if not stat.S_ISDIR(info.st_mode):
            if is_model_name(os.path.basename(start), extensions):
                found = _file(errors, str(start), str(root), info, os.path.islink(start), has_any(str(start)))
                if found:
                    yield found
            continue
        root = str(root)
        stack = [str(start)]
        while stack:
            folder = stack.pop()
            try:
                info = os.stat(folder)
            except OSError as exc:
                _error(errors, folder, exc)
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=_NAME)
            except OSError as exc:
                _error(errors, folder, exc)
                continue
            stems = _sidecar_stems(entry.name for entry in entries)
            for entry in entries:
                try:
                    is_dir = entry.is_dir()  # follows symlinks; a dangling or looping link is neither
                except OSError:
                    continue
                if is_dir:
                    if entry.name not in SKIP_DIRS:
                        stack.append(entry.path)
                    continue
                if not is_model_name(entry.name, extensions):
                    continue
                try:
                    info = entry.stat()
                    linked = entry.is_symlink()
                except OSError as exc:
                    _error(errors, entry.path, exc)
                    continue
                found = _file(errors, entry.path, root, info, linked,
                              bool(stems) and entry.name.rsplit(".", 1)[0] in stems)
                if found:
                    yield found


def _file(errors, path, root, info, linked, sidecars):
    """The Found for a model-named file, or None and its error when it is no regular file (never opened: a
    FIFO would block the reader)."""
    if stat.S_ISREG(info.st_mode):
        return Found(path, root, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, linked, sidecars)
    errors.append({"path": path, "error": "not a regular file (a FIFO, socket or device); skipped"})
    return None


def starts_for(roots, paths):
    """(root, start) pairs: every root, or each PATH with the root holding it; ValueError for a stray PATH."""
    if not paths:
        return [(str(root), str(root)) for root in roots]
    pairs = []
    for raw in paths:
        holder = path = None
        for candidate in (os.path.abspath(os.path.expanduser(str(raw))), os.path.realpath(str(raw))):
            holder = next((root for root in roots if candidate == str(root)
                           or candidate.startswith(str(root).rstrip("/") + "/")), None)
            if holder is not None:
                path = candidate
                break
        if holder is None:
            raise ValueError(f"{raw} is outside every library root ({', '.join(map(str, roots))}); "
                             "add its folder to library.roots in config.yaml")
        pairs.append((str(holder), path))
    return pairs
