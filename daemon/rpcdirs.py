"""Where an aria2 client's `dir` and `out` land under download_dir (SPEC §13); pure, no I/O but `resolve`.

A client names folders on *its* side (ComfyUI-Manager sends `/models/<kind>`);
`rpc_dir_map` says which real folder each prefix means. The worker only ever
writes inside download_dir, so every mapped folder must lie there too and the
answer is a `subdir` relative to it — the same field a manifest item has.
"""
import os
import posixpath
from pathlib import Path

from .errors import ConfigError
from .manifest import filename_problem, subdir_problem


class RpcPathError(ValueError):
    """A dir or out that leaves the mapped folders; the message tells the client what is allowed."""


def _parts(path):
    # Windows clients send backslashes; treating them as separators also catches "..\..".
    return [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]


def _relative_to(folder, root):
    folder, root = Path(folder), Path(root)
    if folder == root:
        return ""
    if root in folder.parents:
        return folder.relative_to(root).as_posix()
    return None


def build_map(rpc_dir_map, download_dir):
    """[(client prefix parts, subdir under download_dir)], longest prefix first; ConfigError if one escapes."""
    download_dir = Path(download_dir).resolve()
    entries = []
    for prefix, target in rpc_dir_map.items():
        real = Path(os.path.expanduser(target))
        real = (real if real.is_absolute() else download_dir / real).resolve()
        subdir = _relative_to(real, download_dir)
        if subdir is None:
            raise ConfigError(f"config.yaml: 'rpc_dir_map' maps {prefix!r} to {str(real)!r}, which is outside "
                              f"download_dir ({download_dir}); the daemon only writes under download_dir, so "
                              "point download_dir at your models folder or map to a folder inside it")
        entries.append((_parts(prefix), subdir))
    entries.sort(key=lambda entry: len(entry[0]), reverse=True)
    return entries


def _join(*parts):
    return "/".join(p for p in parts if p)


def target_subdir(client_dir, out, entries, download_dir):
    """(subdir, filename) for an addUri's `dir` and `out` options; RpcPathError when either escapes.

    `client_dir` None means aria2's global dir (download_dir, type folders
    apply: subdir None). `out` may hold sub-folders ("a/b.safetensors").
    """
    download_dir = Path(download_dir).resolve()
    subdir = None
    if client_dir is not None:
        if not isinstance(client_dir, str) or not client_dir.strip():
            raise RpcPathError("dir must be a non-empty folder path")
        parts = _parts(client_dir)
        if ".." in (p.strip() for p in parts):
            raise RpcPathError(f"dir {client_dir!r} must not contain '..'")
        absolute = client_dir.replace("\\", "/").startswith("/")
        if not absolute:  # aria2 resolves a relative dir against its own folder: here, download_dir
            subdir = _join(*parts)
        else:
            for prefix, mapped in entries:
                if parts[:len(prefix)] == prefix:
                    subdir = _join(mapped, *parts[len(prefix):])
                    break
            else:
                inside = _relative_to(Path(posixpath.normpath(client_dir.replace("\\", "/"))), download_dir)
                if inside is None:
                    allowed = ", ".join("/" + "/".join(p) for p, _ in entries) or "(none)"
                    raise RpcPathError(f"dir {client_dir!r} is outside every folder this daemon may write: "
                                       f"use a folder under {allowed} (rpc_dir_map) or under {download_dir}")
                subdir = inside
    filename = None
    if out is not None:
        if not isinstance(out, str) or not out.strip():
            raise RpcPathError("out must be a non-empty file name")
        if out.replace("\\", "/").startswith("/") or (len(out) > 1 and out[1] == ":"):
            raise RpcPathError(f"out {out!r} must be relative to dir, not absolute")
        parts = _parts(out)
        if not parts or ".." in (p.strip() for p in parts):
            raise RpcPathError(f"out {out!r} must not climb out of dir with '..'")
        problem = filename_problem(parts[-1])
        if problem:
            raise RpcPathError(f"out {out!r}: the file name {problem}")
        filename = parts[-1]
        if len(parts) > 1:
            subdir = _join(subdir or "", *parts[:-1])
    if subdir:
        problem = subdir_problem(subdir)
        if problem:
            raise RpcPathError(f"dir {client_dir!r}: {problem}")
        try:  # a symlinked folder that leads elsewhere is refused here, before anything is queued
            real = (download_dir / subdir).resolve()
        except (OSError, RuntimeError) as exc:
            raise RpcPathError(f"dir {client_dir!r} cannot be used ({exc})") from None
        if _relative_to(real, download_dir) is None:
            raise RpcPathError(f"dir {client_dir!r} leads outside download_dir (a symlink?)")
    return subdir, filename
