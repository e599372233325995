"""Names and moves of manifest files, for spool.py (the one module that moves them): which names the inbox
takes, claim names, free names in done/ and failed/, result files, and moves that never replace a file."""
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import uuid

from .atomic import write_new


def is_manifest_name(name):
    """A file the inbox takes: a manifest or workflow (`*.json`) or a generated image (`*.png`, SPEC §13)."""
    return name.endswith((".json", ".png")) and not name.startswith(".") and not name.endswith(".result.json")


def stem(name):
    """A manifest's name without `.json` / `.png` (its result file is `<stem>.result.json`)."""
    return name.rsplit(".", 1)[0] if name.endswith((".json", ".png")) else name


CLAIM_PREFIX = ".claim-"
# `.claim-<owner>-<uuid>-<inbox name>`; `.claim-<uuid>` alone was the old form (owner and name unknown).
CLAIM = re.compile(r"^\.claim-(?:(?P<owner>[0-9a-f]{8})-)?(?P<uuid>[0-9a-f]{32})(?:-(?P<name>.+))?$", re.S)


def node_tag(node):
    """A node's name as 8 hex digits: a node name may hold characters a file name may not."""
    return hashlib.sha256((node or "").encode("utf-8")).hexdigest()[:8]


def claim_name(node, name):
    """The private name an inbox file takes while one daemon takes it: its owner, a unique id and its name,
    so a claim a crash left behind can be recovered under its name (the name is dropped past 255 bytes)."""
    base = f"{CLAIM_PREFIX}{node_tag(node)}-{uuid.uuid4().hex}"
    full = f"{base}-{name}"
    return full if len(os.fsencode(full)) <= 255 else base


def _stamp():
    return datetime.datetime.now().strftime("%Y%m%dT%H%M%S%f")


def free_name(folder, name):
    """`name` in `folder`, or `<stem>-<timestamp>.json` when taken (never replace an older file)."""
    base, suffix = stem(name), name[len(stem(name)):]
    candidate = name
    while (folder / candidate).exists() or (folder / f"{stem(candidate)}.result.json").exists():
        candidate = f"{base}-{_stamp()}{suffix or '.json'}"
    return candidate


def write_json_atomic(path, data):
    """A result file, written through a new temp file that no planted link can redirect (removed on failure)."""
    write_new(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def move_file(source, target):
    """Rename `source` to `target`; across file systems (EXDEV) copy to a temporary name, rename, unlink."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.unlink(source)


def place(source, folder, name):
    """Move `source` to `name` in `folder`, or to a free name when it is taken (never replacing a file)."""
    target = name
    while True:
        try:
            os.link(source, folder / target)  # fails on a taken name, where os.replace would overwrite
        except FileExistsError:
            target = free_name(folder, name)  # another daemon may take that one first: loop
            continue
        except OSError:  # a file system without hard links, or another one (EXDEV)
            move_file(source, folder / target)
            return target
        os.unlink(source)
        return target


def sniff_suffix(path):
    """`.png` for a PNG image, else `.json`: an old-style claim kept no name."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb") as handle:
        return ".png" if handle.read(8) == b"\x89PNG\r\n\x1a\n" else ".json"
