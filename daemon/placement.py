"""Where a download's file goes, and settling a download whose content is already on disk: its twin's
file (a child download) or a library entry, linked (else copied) where the item asked for it."""
import os
from pathlib import Path

from .atomic import copy_new
from .errors import DaemonError, PermanentError
from .outcome import Outcome
from .parts import drop_leftover_parts
from .states import Status


class Placement:
    """The folders downloads may use (download_dir, and the library roots for updates) and putting
    content that is already on disk into them; each settle returns the step's Outcome."""

    def __init__(self, settings, queue):
        self.settings = settings
        self.queue = queue
        self.download_dir = Path(settings.download_dir).resolve()
        self.library_roots = [Path(root).resolve() for root in settings.library["roots"]]

    def folder(self, row, model_type):
        """The folder the row's file goes in, checked to lie inside download_dir or a library root."""
        subdir = row.subdir
        if subdir is None and model_type:
            subdir = self.settings.type_dirs.get(model_type, self.settings.type_dirs.get("Other", "Other"))
        try:
            folder = (self.download_dir / (subdir or "")).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop raises RuntimeError
            raise PermanentError(f"the folder {subdir!r} cannot be used ({exc}); choose another subdir") from None
        # Updates of adopted files go beside them, in a library root; manifests cannot name one
        # (their subdir is relative, without ..), so only a symlink could lead elsewhere.
        allowed = [self.download_dir, *self.library_roots]
        if not any(folder == root or root in folder.parents for root in allowed):
            raise PermanentError(f"the folder {subdir!r} leads outside download_dir (a symlink?); "
                                 "choose another subdir")
        return folder

    def settle_child(self, row):
        """A download of content another download already fetched: link to it."""
        parent = self.queue.get(row.parent_id)
        if parent.state == Status.FAILED.value:
            return Outcome.failed(f"same file as download {parent.id}, which failed: {parent.error}")
        if parent.state != Status.COMPLETED.value or not parent.path or not os.path.exists(parent.path):
            return Outcome.requeue("its twin is gone: downloading it on its own", parent=None)
        if row.expected_sha256 and parent.sha256 != row.expected_sha256:  # same URL, other content: fetch it
            return Outcome.requeue(f"download {parent.id} got other content; downloading it on its own", parent=None)
        target = self._place(row, Path(parent.path), parent.model_type)
        if isinstance(target, Outcome):
            return target
        return Outcome.completed(f"same content as download {parent.id}, linked at {target}",
                                 path=str(target), filename=target.name, sha256=parent.sha256,
                                 verified=parent.verified, bytes=parent.bytes, total=parent.bytes, duration=0.0,
                                 model_type=parent.model_type, model_name=parent.model_name,
                                 version_name=parent.version_name, base_model=parent.base_model)

    def _place(self, row, source, model_type):
        """Where the item asked for `source`'s content, linked (else copied) there; an Outcome when it failed.

        With no subdir or filename the item completes at `source` itself.
        """
        try:
            folder = self.folder(row, model_type) if (row.subdir or row.filename) else source.parent
        except PermanentError as exc:
            return Outcome.failed(str(exc))
        target = folder / (row.filename or source.name)
        if target == source or (target.exists() and os.path.samefile(target, source)):
            return source if target == source else target
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            return Outcome.failed(f"a different file already exists at {target}; move it away, then retry")
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            return Outcome.failed(f"a file appeared at {target}; move it away, then retry")
        except OSError:  # another file system: a copy, through a new temp file, never replacing a file
            try:
                copy_new(source, target)
            except DaemonError as exc:
                return Outcome.failed(str(exc))
        return target

    def settle_from_library(self, row, entry):
        """The user already has this file (library entry): link it where asked, or complete at once."""
        source = Path(entry.path)
        target = self._place(row, source, entry.model_type)
        if isinstance(target, Outcome):
            return target
        drop_leftover_parts(target, row.id)  # a crash between linking it into place and removing the part
        how = "already present" if target == source else f"linked at {target}"
        return Outcome.completed(f"the library has it ({entry.path}): {how}", path=str(target),
                                 filename=target.name, sha256=entry.sha256, verified=bool(row.expected_sha256),
                                 bytes=entry.size, total=entry.size, duration=0.0, model_type=entry.model_type,
                                 model_name=entry.model_name, version_name=entry.version_name,
                                 base_model=entry.base_model, model_id=row.model_id or entry.model_id,
                                 version_id=row.version_id or entry.version_id, civitai_info=entry.civitai_info,
                                 error=None)
