"""The `replace` policy's second half: once the new file is in place, the old one and its sidecars
move to `<root>/.replaced/<YYYY-MM-DD, local>/<path relative to root>` (SPEC §11). Nothing is deleted.

The intent (replace_state = "moving") is committed before the first rename, so a crash anywhere
between the download's completion and the last rename is finished at the next start.
"""
import datetime
import logging
import os
import shutil
from pathlib import Path

from . import events
from .engines import param
from .models import Download, LibraryEntry, ModelUpdate, db
from .states import Status, UpdateState

log = logging.getLogger("daemon.updates")

REPLACED = ".replaced"
SIDECAR_SUFFIXES = (".civitai.info", ".cm-info.json", ".metadata.json", ".sha256", ".json", ".preview.png",
                    ".preview.jpeg", ".preview.jpg", ".preview.webp", ".preview.gif", ".preview.mp4")


def root_of(path, roots):
    """The library root (or download_dir) holding `path`: the longest that contains it, else its folder."""
    best = None
    for root in roots:
        root = str(root).rstrip("/")
        if path.startswith(root + "/") and (best is None or len(root) > len(best)):
            best = root
    return best or os.path.dirname(path)


def companions(path):
    """The model file and every sidecar of it that exists."""
    name = os.path.basename(path)
    stem = os.path.join(os.path.dirname(path), name.rsplit(".", 1)[0] if "." in name else name)
    return [path] + [stem + s for s in SIDECAR_SUFFIXES if os.path.exists(stem + s)]


def _free(target):
    """`target`, or `target` with -1, -2 … before the suffix when taken (never overwrite in .replaced/)."""
    if not os.path.lexists(target):
        return target
    folder, name = os.path.split(target)
    stem, dot, ext = name.partition(".")
    for n in range(1, 10_000):
        candidate = os.path.join(folder, f"{stem}-{n}{dot}{ext}")
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(target)


def move_aside(path, roots, today=None):
    """Move `path` and its sidecars under `<root>/.replaced/<date>/`; returns the model file's new path."""
    root = root_of(path, roots)
    day = (today or datetime.date.today()).isoformat()  # local date: what the user sees on the calendar
    moved_model = None
    for source in companions(path):
        if not os.path.lexists(source):
            continue
        target = _free(os.path.join(root, REPLACED, day, os.path.relpath(source, root)))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.rename(source, target)
        except OSError:  # another file system (a symlinked folder): copy, then remove the original
            shutil.copy2(source, target)
            os.unlink(source)
        if source == path:
            moved_model = target
    return moved_model


class Replacer:
    """Follows update downloads to their end: applied / failed, and the move for `replace`."""

    def __init__(self, settings, bus):
        self.settings = settings
        self.roots = [*settings.library["roots"], settings.download_dir]
        bus.subscribe(self._on_event)

    def _on_event(self, event):
        if event.name not in (events.DOWNLOAD_COMPLETED, events.DOWNLOAD_FAILED):
            return
        try:
            with db.connection_context():
                # Hand-written: every download's end asks this (peewee's query building showed in the ingest bench).
                row = next(iter(ModelUpdate.raw(f'SELECT * FROM "updates" WHERE "download_id" = {param()} LIMIT 1',
                                                event.data.get("id"))), None)
            if row is not None:
                self.settle(row, event.name == events.DOWNLOAD_COMPLETED)
        except Exception:  # a subscriber must never raise into a worker
            log.exception("update for download %s: could not settle it", event.data.get("id"))

    def recover(self):
        """At start: finish updates whose download ended (or whose move began) while the daemon was down."""
        with db.connection_context():
            rows = list(ModelUpdate.select().where(
                ModelUpdate.download.is_null(False)
                & ((ModelUpdate.state == UpdateState.QUEUED.value) | (ModelUpdate.replace_state == "moving"))))
            states = dict(Download.select(Download.id, Download.state)
                          .where(Download.id.in_([r.download_id for r in rows])).tuples())
        ended = [r for r in rows if states.get(r.download_id) in (Status.COMPLETED.value, Status.FAILED.value)]
        for row in ended:
            self.settle(row, states[row.download_id] == Status.COMPLETED.value)
        return len(ended)

    def settle(self, row, completed):
        if not completed:
            with db.connection_context():
                ModelUpdate.update(state=UpdateState.FAILED.value).where(ModelUpdate.id == row.id).execute()
            return
        if row.mode == "replace" and row.previous_path and row.replace_state != "done":
            self._replace(row)
        with db.connection_context():
            ModelUpdate.update(state=UpdateState.APPLIED.value).where(ModelUpdate.id == row.id).execute()

    def _replace(self, row):
        with db.connection_context():
            new = Download.get_or_none(Download.id == row.download_id)
            ModelUpdate.update(replace_state="moving").where(ModelUpdate.id == row.id).execute()
        old = row.previous_path
        if new is None or not new.path or not os.path.exists(new.path):
            log.warning("update %s: the new file is not in place; %s stays where it is", row.id, old)
            return
        if os.path.exists(old) and os.path.samefile(new.path, old):
            moved = None  # the same file (a hard link): nothing to set aside
        else:
            # Also after a crash half-way: whatever of the set is still in place moves now.
            moved = move_aside(old, self.roots) or row.replaced_to
        with db.connection_context():
            ModelUpdate.update(replace_state="done", replaced_to=moved).where(ModelUpdate.id == row.id).execute()
            LibraryEntry.update(missing=True).where(LibraryEntry.path == old).execute()
        log.info("update %s: %s replaced by %s; the old file and its sidecars are in %s", row.id, old,
                 new.path, Path(moved).parent if moved else "(already moved)")
