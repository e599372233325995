"""The publication gate (SPEC §6): the checks a part must pass, linking it into place without
overwriting, and the quarantine for files that fail their hash. The part itself is parts.py."""
import dataclasses
import hashlib
import logging
import os
import stat
from pathlib import Path

from .atomic import O_CLOEXEC, O_NOFOLLOW, file_in_the_way
from .errors import FileInTheWay, HashMismatch, PermanentError, TransientError
from .filenames import fit_name
from .parts import drop_leftover_parts, forget_validator, regular_file, validator_path
from .segments import drop_ranges
from .sniff import safetensors_problem, small_body_problem, sniff_problem  # noqa: F401 - gate.sniff_problem
from .throttle import READ_SIZE

log = logging.getLogger("daemon.gate")

@dataclasses.dataclass
class Result:
    """A published (or already present) file."""
    path: Path
    filename: str
    sha256: str
    verified: bool
    bytes: int
    existed: bool = False


def in_place(folder, names, expected_sha256, asked_name, download_id):
    """A Result when the expected file already sits at one of `names`; raises FileInTheWay when the name
    asked for explicitly holds something else (no server answer can change that); else None."""
    if not expected_sha256:
        return None
    for name in dict.fromkeys(n for n in names if n):
        target = Path(folder) / name
        info = regular_file(target)
        if info is not None and hash_file(target) == expected_sha256:
            drop_leftover_parts(target, download_id)
            return Result(target, name, expected_sha256, True, info.st_size, existed=True)
        if name == asked_name and os.path.lexists(target):
            raise file_in_the_way(target)
    return None


def publish(part, expected_sha256, api_size):
    """The gate: size, that the part on disk is the very file written and hashed, format, hash; then
    link that file into place without overwriting. Returns a Result."""
    size = part.offset
    if part.total is not None and size != part.total:
        raise TransientError(f"size mismatch: got {size} bytes, expected {part.total}", restart=True)
    if api_size and size != api_size:
        raise TransientError(f"size mismatch: got {size} bytes, Civitai lists {api_size}", restart=True)
    if size == 0:
        raise TransientError("the server sent an empty file", restart=True)
    fd = part.open_own()
    try:
        return _publish_own(part, fd, size, expected_sha256)
    finally:
        os.close(fd)


def _publish_own(part, fd, size, expected_sha256):
    instead = small_body_problem(fd, size, part.filename)
    if instead:
        part.discard()
        raise PermanentError(f"the server sent {instead} instead of the file; check the URL (the link may need "
                             "a login, have expired or point to an error page)")
    if part.filename.lower().endswith(".safetensors"):
        problem = safetensors_problem(fd, size)
        if problem and not expected_sha256:
            raise TransientError(f"not a valid .safetensors file ({problem})", restart=True)
    digest = part.hasher.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise HashMismatch(expected_sha256, digest)
    target = part.target
    drop_ranges(part.path)  # complete and verified: no ranges to resume (also after a 416 on a full part)
    existing = part.existing_sha
    if existing is not None or os.path.lexists(target):
        if existing is None:
            existing = hash_file(target) if regular_file(target) else None
        part.discard()
        if existing == digest:
            return Result(target, part.filename, digest, bool(expected_sha256), size, existed=True)
        raise file_in_the_way(target)
    link_into_place(part, fd, target)
    return Result(target, part.filename, digest, bool(expected_sha256), size)


def _link_open_file(fd, target):
    """Hard-link the open file itself (not whatever its name points to now) at `target` (Linux /proc)."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    try:
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def link_into_place(part, fd, target):
    """Put the part open as `fd` at `target` without ever replacing an existing file, then drop the part
    name; the name created is checked to be that very file."""
    mine = os.fstat(fd)
    forget_validator(fd)
    try:
        try:
            _link_open_file(fd, target)
        except FileExistsError:
            raise
        except OSError:  # no /proc: link the name itself (never what a link there points to), checked below
            os.link(part.path, target, follow_symlinks=False)
    except FileExistsError:
        raise FileInTheWay(f"a file appeared at {target} while downloading; move it away, then retry") from None
    except OSError:
        if os.path.lexists(target):  # file systems without hard links: check, then rename
            raise FileInTheWay(f"a file already exists at {target}; move it away, then retry") from None
        os.rename(part.path, target)
    placed = os.lstat(target)
    if (placed.st_dev, placed.st_ino) != (mine.st_dev, mine.st_ino):
        os.unlink(target)  # the name we just created holds another file: take it back
        part.discard()
        raise TransientError(f"the part of {target.name} was replaced while publishing; starting again",
                             restart=True)
    there = regular_file(part.path)
    if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
        os.unlink(part.path)
    validator_path(part.folder, part.filename, part.download_id).unlink(missing_ok=True)


def quarantine(part, folder, exc, download_id):
    """Keep a part that failed its hash in `folder` (never under its final name); notes where on `exc`."""
    if not part.filename or regular_file(part.path) is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):  # a link planted as the quarantine: keep the part instead
        log.warning("download %s: %s is not a folder; the mismatching file stays at %s", download_id, folder,
                    part.path)
        return
    target = folder / fit_name(part.filename, f".{exc.actual[:12]}")
    os.replace(part.path, target)  # moves the entry; replaces a link at `target` itself, never its target
    drop_ranges(part.path)
    validator_path(part.folder, part.filename, part.download_id).unlink(missing_ok=True)
    exc.quarantined = target
    log.warning("download %s: kept the mismatching file in %s (expected %s, got %s)",
                download_id, target, exc.expected, exc.actual)


def hash_file(path):
    """SHA256 of a file, read without following a link at `path`."""
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()
