"""The publication gate (SPEC §6): part paths, the checks a part must pass, linking it into place
without overwriting, and the quarantine for files that fail their hash."""
import dataclasses
import hashlib
import json
import logging
import os
import struct
import threading
from pathlib import Path

from .errors import FileInTheWay, HashMismatch, PermanentError, TransientError
from .filenames import fit_name
from .segments import drop_ranges, load_ranges
from .throttle import READ_SIZE

log = logging.getLogger("daemon.gate")

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

SNIFF = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--")


@dataclasses.dataclass
class Result:
    """A published (or already present) file."""
    path: Path
    filename: str
    sha256: str
    verified: bool
    bytes: int
    existed: bool = False


@dataclasses.dataclass
class Part:
    """State carried between attempts: the part file and the hash of its bytes."""
    folder: Path
    filename: str | None
    hasher: object = None
    offset: int = 0
    etag: str | None = None
    total: int | None = None
    existing_sha: str | None = None  # hash of a file already at the final name
    have: object = None              # segments.RangeSet of a segmented part (holes possible), else None
    validator: dict | None = None    # ETag / Last-Modified / total those ranges were fetched under
    asked_end: int | None = None     # end (exclusive) of the bounded first request of this attempt
    ranges_ignored: bool = False     # the server answered a ranged request with the whole file

    @property
    def path(self):
        return part_path(self.folder, self.filename)

    @property
    def target(self):
        return self.folder / self.filename

    def load(self):
        """Hash an existing part once so a resume can continue the same hash. A segmented part (its
        completed ranges beside it) is hashed up to its first hole; the ranges after it are kept."""
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.have = self.validator = None
        if not self.path.exists():
            return
        saved = load_ranges(self.path)
        limit = None
        if saved is not None:
            self.validator, self.have = saved
            limit = self.have.prefix()
        with open(self.path, "rb") as handle:
            while block := handle.read(READ_SIZE if limit is None else min(READ_SIZE, limit - self.offset)):
                self.hasher.update(block)
                self.offset += len(block)
        if limit is not None and self.offset < limit:  # the part is shorter than its ranges say
            self.discard()

    def discard(self):
        """Drop the part: the next attempt starts from byte zero."""
        if self.filename:
            remove_part(self.folder, self.filename)
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.etag = None
        self.have = self.validator = None

    def truncate_to_hashed(self):
        """Cut the part back to the bytes the hash covers (after a failed write): a clean resume point."""
        with open(self.path, "r+b") as handle:
            handle.truncate(self.offset)


def remove_part(folder, filename):
    """Delete the part of `filename` and the completed-ranges file of a segmented one beside it."""
    path = part_path(folder, filename)
    path.unlink(missing_ok=True)
    drop_ranges(path)


def part_path(folder, filename):
    """Where `filename` is downloaded to before it passes the publication gate."""
    return Path(folder) / fit_name(filename, ".part")


def file_in_the_way(target):
    return FileInTheWay(f"a different file already exists at {target}; move it away or choose another "
                        "filename, then retry")


def in_place(folder, names, expected_sha256, asked_name):
    """A Result when the expected file already sits at one of `names`; raises FileInTheWay when the name
    asked for explicitly holds something else (no server answer can change that); else None."""
    if not expected_sha256:
        return None
    for name in dict.fromkeys(n for n in names if n):
        target = Path(folder) / name
        if target.is_file() and hash_file(target) == expected_sha256:
            # A part beside it is left over from a crash between linking it into place and removing it.
            remove_part(folder, name)
            return Result(target, name, expected_sha256, True, target.stat().st_size, existed=True)
        if name == asked_name and target.exists():
            raise file_in_the_way(target)
    return None


# Names a server may rightly send as text: an error page check would refuse them.
TEXT_NAMES = (".txt", ".json", ".yaml", ".yml", ".md", ".html", ".htm", ".xml", ".svg", ".csv", ".toml", ".ini",
              ".cfg", ".py", ".js")
BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
SMALL_BODY = 64 << 10  # an error message is short; a model file never is


def _stripped(head):
    for bom in BOMS:
        if head.startswith(bom):
            head = head[len(bom):]
            break
    return head.lstrip()


def sniff_problem(head, filename=None):
    """What the first bytes of a model file show it to be instead (an HTML or XML page), or None."""
    if filename and filename.lower().endswith(TEXT_NAMES):
        return None
    if _stripped(head[:1024]).lower().startswith(SNIFF):
        return "an HTML page"
    return None


def small_body_problem(fd, size, filename):
    """What a short non-text download is instead of a model file (a JSON or plain-text message), or None."""
    name = (filename or "").lower()
    if size > SMALL_BODY or name.endswith(TEXT_NAMES) or name.endswith(".safetensors"):
        return None
    data = _stripped(os.pread(fd, size, 0))
    if data[:1] in (b"{", b"["):
        try:
            json.loads(data)
            return f"a JSON message ({data[:120].decode('utf-8', 'replace')})"
        except ValueError:
            pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return f"a short text message ({text[:120].strip()!r})"
    return None


def safetensors_problem(path, size):
    """Why the file is not a parseable .safetensors, or None."""
    if size < 8:
        return "too small to be a .safetensors file"
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length == 0 or length > 100 * 2**20 or 8 + length > size:
            return f"header length {length} does not fit a {size}-byte file"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "header is not JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    return None


def publish(part, expected_sha256, api_size):
    """The gate: size, format, hash; then link into place without overwriting. Returns a Result."""
    size = part.offset
    if part.total is not None and size != part.total:
        raise TransientError(f"size mismatch: got {size} bytes, expected {part.total}", restart=True)
    if api_size and size != api_size:
        raise TransientError(f"size mismatch: got {size} bytes, Civitai lists {api_size}", restart=True)
    if size == 0:
        raise TransientError("the server sent an empty file", restart=True)
    with open(part.path, "rb") as handle:
        instead = small_body_problem(handle.fileno(), size, part.filename)
    if instead:
        part.discard()
        raise PermanentError(f"the server sent {instead} instead of the file; check the URL (the link may need "
                             "a login, have expired or point to an error page)")
    if part.filename.lower().endswith(".safetensors"):
        problem = safetensors_problem(part.path, size)
        if problem and not expected_sha256:
            raise TransientError(f"not a valid .safetensors file ({problem})", restart=True)
    digest = part.hasher.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise HashMismatch(expected_sha256, digest)
    target = part.target
    drop_ranges(part.path)  # complete and verified: no ranges to resume (also after a 416 on a full part)
    existing = part.existing_sha
    if existing is not None or target.exists():
        existing = existing or hash_file(target)
        part.path.unlink(missing_ok=True)
        if existing == digest:
            return Result(target, part.filename, digest, bool(expected_sha256), size, existed=True)
        raise file_in_the_way(target)
    link_into_place(part.path, target)
    return Result(target, part.filename, digest, bool(expected_sha256), size)


def link_into_place(source, target):
    """Rename without ever replacing an existing file."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileInTheWay(f"a file appeared at {target} while downloading; move it away, then retry") from None
    except OSError:
        if target.exists():  # file systems without hard links: check, then rename
            raise FileInTheWay(f"a file already exists at {target}; move it away, then retry") from None
        os.replace(source, target)
        return
    os.unlink(source)


def quarantine(part, folder, exc, download_id):
    """Keep a part that failed its hash in `folder` (never under its final name); notes where on `exc`."""
    if part.filename and part.path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / fit_name(part.filename, f".{exc.actual[:12]}")
        os.replace(part.path, target)
        exc.quarantined = target
        log.warning("download %s: kept the mismatching file in %s (expected %s, got %s)",
                    download_id, target, exc.expected, exc.actual)


def hash_file(path):
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()


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
