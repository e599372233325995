"""Each download's own part file (SPEC §6): its name, the checks on opening it, the hash carried between
attempts, the stored validator of a single-stream part, and removing parts."""
import dataclasses
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

from .atomic import O_CLOEXEC, O_NOFOLLOW, write_new
from .errors import FileInTheWay, TransientError
from .filenames import fit_name
from .segments import drop_ranges, load_ranges, ranges_path
from .throttle import READ_SIZE

log = logging.getLogger("daemon.gate")  # a part's lines stay under the gate's logger, as before


@dataclasses.dataclass
class Part:
    """One download's part file and the hash of its bytes, carried between attempts.

    The part is named after its download (`<name>.<download id>.part`), created with O_EXCL and opened
    with O_NOFOLLOW, so no other download, planted link or server-chosen name can share it. `inode` is
    the file the bytes were written to: publication links that file and no other."""
    folder: Path
    filename: str | None
    download_id: int = 0
    adopt_legacy: bool = False       # the name was known before any request: an old-style part may be taken over
    hasher: object = None
    offset: int = 0
    etag: str | None = None
    total: int | None = None
    existing_sha: str | None = None  # hash of a file already at the final name
    have: object = None              # segments.RangeSet of a segmented part (holes possible), else None
    validator: dict | None = None    # ETag / Last-Modified / total those ranges were fetched under
    asked_end: int | None = None     # end (exclusive) of the bounded first request of this attempt
    ranges_ignored: bool = False     # the server answered a ranged request with the whole file
    inode: tuple | None = None       # (st_dev, st_ino) of the part hashed and written

    @property
    def path(self):
        return part_path(self.folder, self.filename, self.download_id)

    @property
    def target(self):
        return self.folder / self.filename

    def load(self):
        """Hash an existing part once so a resume can continue the same hash. A segmented part (its
        completed ranges beside it) is hashed up to its first hole; the ranges after it are kept."""
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.have = self.validator = None
        self.inode = None
        if self.adopt_legacy:
            self._adopt_legacy()
        try:
            fd = os.open(self.path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        except OSError:  # a link (ELOOP) or a folder: not a part this download wrote
            self._not_mine()
            return
        try:
            info = os.fstat(fd)
            if not _own_file(info):
                self._not_mine()
                return
            self.inode = (info.st_dev, info.st_ino)
            saved = load_ranges(self.path)
            limit = None
            if saved is not None:
                self.validator, self.have = saved
                limit = self.have.prefix()
            else:  # one stream: the ETag / Last-Modified its bytes came with, for If-Range
                self.validator = read_validator(validator_path(self.folder, self.filename, self.download_id), fd)
            while block := os.pread(fd, READ_SIZE if limit is None else min(READ_SIZE, limit - self.offset),
                                    self.offset):
                self.hasher.update(block)
                self.offset += len(block)
        finally:
            os.close(fd)
        if limit is not None and self.offset < limit:  # the part is shorter than its ranges say
            self.discard()

    def _not_mine(self):
        """A link, FIFO, folder or hard-linked file at this download's part name: removed, never used."""
        log.warning("download %s: removed %s (not a plain file of its own)", self.download_id, self.path)
        try:
            os.unlink(self.path)
        except IsADirectoryError:
            raise FileInTheWay(f"a folder is in the way at {self.path}; move it away, then retry") from None
        except FileNotFoundError:
            pass
        drop_ranges(self.path)

    def _adopt_legacy(self):
        """Take over a `<name>.part` left by a version before per-download parts (docs/reliability.md):
        only a plain file with one link, only by a download that had this name before any request."""
        self.adopt_legacy = False
        legacy = legacy_part_path(self.folder, self.filename)
        info = regular_file(legacy)
        if info is None or info.st_nlink != 1 or os.path.lexists(self.path):
            return
        os.rename(legacy, self.path)  # moves the entry itself; the checks on open catch a swap meanwhile
        if os.path.lexists(ranges_path(legacy)) and regular_file(ranges_path(legacy)):
            os.rename(ranges_path(legacy), ranges_path(self.path))
        log.info("download %s: resuming from the old-style part %s", self.download_id, legacy.name)

    def open(self, flags):
        """Open the part for writing (`flags`: O_WRONLY or O_RDWR): the one hashed by `load`, never
        through a link, or a new one (O_EXCL). Records the inode that publication must find again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        flags |= O_NOFOLLOW | O_CLOEXEC
        for _ in range(3):
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    fd = os.open(self.path, flags | os.O_NONBLOCK)
                except FileNotFoundError:
                    continue
                except OSError:
                    self._not_mine()
                    continue
                info = os.fstat(fd)
                if not _own_file(info):
                    os.close(fd)
                    self._not_mine()
                    continue
                if self.inode is not None and self.inode != (info.st_dev, info.st_ino):
                    os.close(fd)
                    self.hasher = None  # not the file hashed: the next attempt hashes what is there
                    raise TransientError(f"{self.path.name} was replaced since it was hashed; hashing it again")
            info = os.fstat(fd)
            self.inode = (info.st_dev, info.st_ino)
            return fd
        raise TransientError(f"could not create {self.path.name}: something keeps appearing at its name")

    def open_own(self):
        """A read handle on the part that is verified to be the very file written and hashed (same
        inode, plain, one link, the hashed size); a swapped or changed part is dropped (restart)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            fd = None
        info = os.fstat(fd) if fd is not None else None
        if info is None or not _own_file(info) or (info.st_dev, info.st_ino) != self.inode \
                or info.st_size != self.offset:
            if fd is not None:
                os.close(fd)
            log.warning("download %s: its part %s is not the file it wrote; starting again",
                        self.download_id, self.path.name)
            self._not_mine()
            self.inode = None
            raise TransientError(f"the part {self.path.name} was replaced or changed while downloading; "
                                 "starting again", restart=True)
        return fd

    def discard(self):
        """Drop the part: the next attempt starts from byte zero."""
        if self.filename:
            remove_part(self.folder, self.filename, self.download_id)
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.etag = None
        self.have = self.validator = None
        self.inode = None

    def truncate_to_hashed(self):
        """Cut the part back to the bytes the hash covers (after a failed write): a clean resume point."""
        fd = os.open(self.path, os.O_WRONLY | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK)
        try:
            if _own_file(os.fstat(fd)):
                os.ftruncate(fd, self.offset)
        finally:
            os.close(fd)


def _own_file(info):
    """A plain file with one link: what a download's own part always is."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def remove_part(folder, filename, download_id):
    """Delete a download's part, its stored validator and the completed-ranges file of a segmented one."""
    path = part_path(folder, filename, download_id)
    for each in (path, validator_path(folder, filename, download_id)):
        try:
            os.unlink(each)  # the entry itself: a link there is removed, never followed
        except (FileNotFoundError, IsADirectoryError):
            pass
    drop_ranges(path)


def validator_path(folder, filename, download_id):
    """The small JSON beside a single-stream part: the ETag / Last-Modified its bytes came with."""
    return Path(folder) / fit_name(filename, f".{int(download_id)}.part.json")


# A single-stream part's validator lives in an extended attribute of the part itself. A small JSON file
# per download, created and deleted again at publication, freed one inode per download, and ext4's inode
# allocator scans past every recently deleted inode (recently_deleted() in find_inode_bit): a burst of
# small downloads got slower with every file (kernel profile, bench ingest). The file is the fallback
# where the file system has no user xattrs.
VALIDATOR_XATTR = "user.civitai-daemon.validator"


def remember_validator(part, validator, fd):
    """Keep a fresh part's validator with it (`fd`: the part, open for writing), so a resume after a
    restart sends If-Range (issue 11)."""
    path = validator_path(part.folder, part.filename, part.download_id)
    kept = {k: v for k, v in (validator or {}).items() if k in ("etag", "last_modified") and v}
    if not kept:
        path.unlink(missing_ok=True)
        return
    data = json.dumps(kept).encode("utf-8")
    try:
        os.setxattr(fd, VALIDATOR_XATTR, data)
    except OSError:  # no user xattrs here (tmpfs before 6.6, FAT, some network file systems)
        write_new(path, data)


def forget_validator(fd):
    """Drop the validator from a part about to be published: the user's file carries none of our marks."""
    try:
        os.removexattr(fd, VALIDATOR_XATTR)
    except OSError:  # none there, or no xattrs on this file system
        pass


def read_validator(path, fd=None):
    """The stored validator (the part's xattr through `fd`, else the file at `path`), or None when there
    is none or it is not one (never read through a link)."""
    data = None
    if fd is not None:
        try:
            data = json.loads(os.getxattr(fd, VALIDATOR_XATTR)[:4096])
        except (OSError, ValueError):
            data = None
    if data is None:
        try:
            handle_fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(handle_fd, "rb") as handle:
                data = json.loads(handle.read(4096))
        except (OSError, ValueError):
            return None
    if not isinstance(data, dict):
        return None
    kept = {k: data.get(k) for k in ("etag", "last_modified")}
    if not all(v is None or (isinstance(v, str) and v.isprintable() and len(v) < 1024) for v in kept.values()):
        return None
    return kept if any(kept.values()) else None


def part_path(folder, filename, download_id):
    """Where download `download_id` writes `filename` before it passes the publication gate."""
    return Path(folder) / fit_name(filename, f".{int(download_id)}.part")


def legacy_part_path(folder, filename):
    """The part name of versions before per-download parts."""
    return Path(folder) / fit_name(filename, ".part")


def regular_file(path):
    """The lstat of `path` when it is a plain file (not a link, folder or FIFO), else None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def drop_leftover_parts(target, download_id):
    """Remove the parts beside a file that is already in place, left over from a crash between linking
    it into place and removing the part: the download's own part, and an old-style `<name>.part` only
    when it is this very file (same inode)."""
    target = Path(target)
    info = regular_file(target)
    if info is None:
        return
    remove_part(target.parent, target.name, download_id)
    legacy = legacy_part_path(target.parent, target.name)
    there = regular_file(legacy)
    if there is not None and (there.st_dev, there.st_ino) == (info.st_dev, info.st_ino):
        os.unlink(legacy)
