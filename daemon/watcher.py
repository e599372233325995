"""Watch inbox/ and hand complete `*.json` files to the spool (SPEC §5).

A file is taken when its writer closes it (inotify close-write) and it parses,
or when its size has not changed for 2 s and it parses; a file that still does
not parse after 10 s of stability is rejected. watchdog's events are only
hints: a scan of the folder (at start, every half second while something
waits, and every few seconds anyway) catches anything inotify missed.
"""
import logging
import os
import queue
import threading
import time
from pathlib import Path
from stat import S_ISDIR, S_ISREG

from watchdog.events import FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .errors import ManifestError
from .inotify import open_hints
from .manifest import parse_manifest
from .pngmeta import INCOMPLETE as INCOMPLETE_PNG
from .spoolfiles import is_manifest_name

log = logging.getLogger("daemon.watcher")

STABLE_SECONDS = 2.0
GIVE_UP_SECONDS = 10.0
RESCAN_SECONDS = 5.0
INCOMPLETE_PREFIXES = ("manifest: not valid JSON", "manifest: not UTF-8 text", INCOMPLETE_PNG)


class _Hints(FileSystemEventHandler):
    def __init__(self, hints):
        self.hints = hints

    def on_any_event(self, event):
        if isinstance(event, FileMovedEvent):
            self.hints.put(event.dest_path)
        elif isinstance(event, (FileClosedEvent, FileCreatedEvent)):
            self.hints.put(event.src_path)


class Watcher:
    """The inbox observer plus one intake thread that decides when a file is complete."""

    def __init__(self, inbox, spool, parse=None):
        self.inbox = Path(inbox)
        self.spool = spool
        self.parse = parse or (lambda name, data: parse_manifest(data))  # intake.Intake.parse in the daemon
        self.hints = queue.Queue()
        self.stop_event = threading.Event()
        self.observer = None
        self.thread = None
        self._pending = {}  # path → [size, mtime, stable_since]

    def start(self):
        # Raw inotify where it is to be had (watchdog's move pairing is quadratic in a burst of renames).
        self.observer = open_hints(self.inbox, self.hints)
        if self.observer is None:
            self.observer = Observer()
            self.observer.schedule(_Hints(self.hints), str(self.inbox), recursive=False)
            self.observer.daemon = True
        self.observer.start()
        self.thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.hints.put(None)
        if self.observer:
            self.observer.stop()
            self.observer.join(timeout=3)
        if self.thread:
            self.thread.join(timeout=5)

    def healthy(self):
        return bool(self.thread and self.thread.is_alive() and self.observer and self.observer.is_alive())

    def _run(self):
        self._scan()
        next_scan = time.monotonic() + RESCAN_SECONDS
        while not self.stop_event.is_set():
            timeout = 0.25 if self._pending else max(0.05, next_scan - time.monotonic())
            try:
                hint = self.hints.get(timeout=timeout)
            except queue.Empty:
                hint = False
            if hint is None:
                break
            if hint == "":  # the kernel's event queue overflowed: look at the folder now
                next_scan = 0
            try:
                if hint:
                    self._consider(Path(hint))
                    while True:  # drain a burst of hints before the slower checks
                        more = self.hints.get_nowait()
                        if more is None:
                            return
                        self._consider(Path(more))
            except queue.Empty:
                pass
            except Exception:
                log.exception("intake failed on a hint; carrying on")
            try:
                self._check_pending()
                if time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + RESCAN_SECONDS
            except Exception:
                log.exception("inbox scan failed; carrying on")

    def _scan(self):
        with os.scandir(self.inbox) as entries:
            for entry in entries:
                if is_manifest_name(entry.name) and str(self.inbox / entry.name) not in self._pending:
                    self._consider(self.inbox / entry.name)

    def _consider(self, path):
        if path.parent != self.inbox or not is_manifest_name(path.name):
            return
        if path.is_symlink():
            self._pending.pop(str(path), None)
            self.spool.accept(path, problems=["manifest: is a symbolic link; symlinks in inbox/ are not followed "
                                              "(copy or move the file in instead)"])
            return
        try:
            stat = path.lstat()
        except FileNotFoundError:
            self._pending.pop(str(path), None)
            return
        if not S_ISREG(stat.st_mode):  # a FIFO would block intake for ever; a directory never parses
            self._pending.pop(str(path), None)
            kind = "a directory" if S_ISDIR(stat.st_mode) else "not a regular file (a FIFO, socket or device)"
            self.spool.accept(path, problems=[f"manifest: is {kind}; only regular files in inbox/ are read"])
            return
        if self._try(path):  # a prefix of a JSON object or list never parses, so trying early is safe
            return
        entry = self._pending.get(str(path))
        if entry is None:
            self._pending[str(path)] = [stat.st_size, stat.st_mtime_ns, time.monotonic()]

    def _try(self, path, give_up=False):
        """Accept the file if it parses; reject it when `give_up`; else leave it waiting."""
        try:
            data = self.spool.read(path)
        except FileNotFoundError:
            self._pending.pop(str(path), None)
            return True
        except ManifestError as exc:  # swapped for something that is not a regular file
            self._pending.pop(str(path), None)
            self.spool.accept(path, problems=exc.problems)
            return True
        except OSError:
            return False
        try:
            items = self.parse(path.name, data)  # parsed once, here; the spool takes the items
        except ManifestError as exc:
            # A file cut short (possibly inside a UTF-8 character) may still be growing: wait for it.
            if not exc.problems[0].startswith(INCOMPLETE_PREFIXES) or give_up:
                self._pending.pop(str(path), None)
                self.spool.accept(path, problems=exc.problems)
                return True
            return False
        self._pending.pop(str(path), None)
        self.spool.accept(path, items=items)
        return True

    def _check_pending(self):
        now = time.monotonic()
        for key, entry in list(self._pending.items()):
            path = Path(key)
            try:
                stat = path.stat()
            except FileNotFoundError:
                self._pending.pop(key, None)
                continue
            if (stat.st_size, stat.st_mtime_ns) != (entry[0], entry[1]):
                entry[:] = [stat.st_size, stat.st_mtime_ns, now]
                continue
            stable = now - entry[2]
            if stable >= STABLE_SECONDS:
                self._try(path, give_up=stable >= GIVE_UP_SECONDS)
