"""The model update check: daily with APScheduler, and on demand (SPEC §9)."""
import json
import logging
import threading
import time

import datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from . import events, sidecars
from .update_policy import Applier, classify, overrides, policy_for, update_dict
from .civitai import NotOnCivitai, file_sha256, newest_version, parse_time, primary_file
from .errors import DaemonError
from .models import Download, LibraryEntry, ModelUpdate, db, iso
from .states import Status, UpdateState

log = logging.getLogger("daemon.updates")

BATCH = 100
EPOCH = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
MIN_CALL_INTERVAL = 1.0


class UpdateChecker:
    """Finds newer versions (or re-uploads) of models with a completed download."""

    def __init__(self, settings, client, queue, bus, fleet=None):
        self.settings = settings
        self.client = client
        self.queue = queue
        self.bus = bus
        self.config = settings.update_check
        self._lock = threading.Lock()
        self._last_call = 0.0
        self._last = None
        self.scheduler = None
        self.before_scheduled = None  # e.g. the library rescan (library.rescan: daily)
        self.applier = Applier(queue, self.config)
        self.fleet = fleet  # fleet mode: the scheduled check runs on one daemon a day

    def start(self):
        if not self.config.get("enabled"):
            log.info("daily update check disabled (update_check.enabled: false)")
            return
        hour, minute, second = (int(x) for x in (self.config["time"] + ":00").split(":")[:3])
        self.scheduler = BackgroundScheduler(daemon=True)
        self.scheduler.add_job(self._scheduled, CronTrigger(hour=hour, minute=minute, second=second),
                               id="update-check", max_instances=1, coalesce=True, misfire_grace_time=3600)
        self.scheduler.start()
        job = self.scheduler.get_job("update-check")
        log.info("daily update check at %s local time (next run %s)", self.config["time"], job.next_run_time)

    def stop(self):
        if self.scheduler:
            self.scheduler.shutdown(wait=False)

    def _scheduled(self):
        if self.fleet is not None and self.fleet.shared and not self.fleet.claim_daily("update-check"):
            log.info("scheduled update check: another daemon of the fleet runs it today")
            return
        if self.before_scheduled is not None:
            try:
                self.before_scheduled()
            except Exception:
                log.exception("library rescan before the update check failed; checking anyway")
        try:
            self.check_now()
        except Exception:
            log.exception("scheduled update check failed")

    # -- queries ---------------------------------------------------------------
    def list(self, limit=50, offset=0, state=None):
        with db.connection_context():
            query = ModelUpdate.select()
            if state:
                query = query.where(ModelUpdate.state == state)
            total = query.count()
            rows = list(query.order_by(ModelUpdate.id.desc()).limit(limit).offset(offset))
        policies = overrides({r.model_id for r in rows})
        default = self.config.get("policy", "alongside") if self.config.get("auto_download", True) else "notify"
        return [dict(update_dict(r, policies.get(r.model_id)), effective_policy=policies.get(r.model_id) or default)
                for r in rows], total

    def apply(self, ids=None, everything=False, mode=None):
        """Enqueue chosen updates (POST /api/updates/apply); see update_policy.Applier."""
        return self.applier.apply(ids, everything, mode)

    # -- the check ---------------------------------------------------------------
    def _pace(self):
        wait = self._last_call + MIN_CALL_INTERVAL - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_call = time.monotonic()

    def _fetch_models(self, ids, problems):
        """Model JSON by id, in bulk; a failed batch is retried once, then model by model."""
        found = {}
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            items = None
            for _ in range(2):
                self._pace()
                try:
                    items = self.client.models(batch)
                    break
                except DaemonError as exc:
                    log.warning("update check: bulk lookup of %d model(s) failed: %s", len(batch), exc)
            for model in items or []:
                if isinstance(model, dict) and model.get("id") in batch:
                    found[model["id"]] = model
            for model_id in batch:  # missing from the list is not a deletion: ask once by id
                if model_id in found:
                    continue
                self._pace()
                try:
                    found[model_id] = self.client.model(model_id)
                except NotOnCivitai:
                    problems.append(f"model {model_id} is no longer on Civitai (deleted or unpublished)")
                except DaemonError as exc:
                    problems.append(f"model {model_id}: {exc}")
        return found

    def check_now(self):
        """Run one check and return its summary; a call while one runs waits for it and shares its summary."""
        if not self._lock.acquire(blocking=False):
            with self._lock:  # the running check ends; its answer is fresh enough
                return dict(self._last or {}, shared=True)
        try:
            self._last = self._check()
            return self._last
        finally:
            self._lock.release()

    def _check(self):
        started = time.monotonic()
        with db.connection_context():
            downloaded = list(Download.select().where((Download.state == Status.COMPLETED.value)
                                                      & Download.model_id.is_null(False)
                                                      & Download.parent.is_null())
                              .order_by(Download.id))
            adopted = list(LibraryEntry.select().where(LibraryEntry.model_id.is_null(False)
                                                       & LibraryEntry.version_id.is_null(False)
                                                       & (LibraryEntry.missing == False)  # noqa: E712
                                                       & LibraryEntry.download.is_null()))
        downloaded += [_Adopted(entry) for entry in adopted]
        by_model = {}
        for row in downloaded:
            by_model.setdefault(row.model_id, []).append(row)
        problems = []
        models = self._fetch_models(sorted(by_model), problems)
        found = []
        checked = 0
        self._tally = {"applied": 0, "waiting": 0, "skipped": {}}
        for model_id, model in models.items():
            try:
                update = self._compare(model, by_model[model_id])
            except NotOnCivitai as exc:
                problems.append(str(exc))
                continue
            except Exception as exc:  # one odd model must not end the check
                log.exception("update check: model %s", model_id)
                problems.append(f"model {model_id}: {exc}")
                continue
            checked += 1
            if update:
                found.append(update)
        for problem in problems:
            log.warning("update check: %s", problem)
        log.info("update check: %d model(s) checked, %d update(s), %d problem(s) in %.1f s",
                 checked, len(found), len(problems), time.monotonic() - started)
        summary = {"checked": checked, "found": len(found), "applied": self._tally["applied"],
                   "waiting": self._tally["waiting"], "skipped": self._tally["skipped"], "problems": len(problems)}
        self.bus.publish(events.UPDATES_SUMMARY, summary)
        return {"checked": checked, "updates": found, "problems": problems, "summary": summary,
                "duration": round(time.monotonic() - started, 2)}

    def _compare(self, model, rows):
        """The update this model offers over the downloaded `rows`, or None; NotOnCivitai when it is gone."""
        name = model.get("name")
        if model.get("mode") in ("Archived", "TakenDown"):
            raise NotOnCivitai(f"model {model['id']} '{name}' was {model['mode'].lower()} on Civitai; "
                               "no new versions can be downloaded")
        newest = newest_version(model)
        if newest is None:
            raise NotOnCivitai(f"model {model['id']} '{name}' has no published versions on Civitai any more "
                               "(deleted or unpublished)")
        have = {row.version_id: row for row in rows if row.version_id}
        # "Newer" is against the newest version the user has, by Civitai's dates (an old version
        # downloaded last is not the reference); versions no longer listed count as oldest.
        when = {v["id"]: version_time(v) for v in model.get("modelVersions") or [] if isinstance(v, dict)}
        latest_row = max(rows, key=lambda r: (when.get(r.version_id) or EPOCH, r.id or 0))
        file = primary_file(newest)
        new_sha = file_sha256(file)
        if newest["id"] in have:
            row = have[newest["id"]]
            if not new_sha or not row.sha256 or new_sha == row.sha256:
                self._refresh_metadata(row, newest)
                return None
            reason, previous = "re-uploaded", row
        elif (when.get(newest["id"]) or EPOCH) <= (when.get(latest_row.version_id) or EPOCH):
            return None  # the user has a version at least as new (e.g. the listed newest was reordered)
        else:
            reason, previous = "new version", latest_row
        with db.connection_context():
            known = ModelUpdate.get_or_none((ModelUpdate.model_id == model["id"])
                                            & (ModelUpdate.version_id == newest["id"])
                                            & (ModelUpdate.sha256 == new_sha))
        policy = policy_for(model["id"], self.config)
        state, why, not_before = classify(newest, previous.base_model, policy)
        if known is not None:
            # Seen before: only a waiting one whose date has come moves on (to pending, or queued by policy).
            if known.state != UpdateState.WAITING.value or state == UpdateState.WAITING:
                return None
            record = known
            with db.connection_context():
                ModelUpdate.update(state=UpdateState.PENDING.value, not_before=None,
                                   reason=why or known.reason).where(ModelUpdate.id == known.id).execute()
        else:
            filename = None
            if reason == "re-uploaded" and previous.filename:  # never overwrite the old file
                stem, dot, ext = previous.filename.rpartition(".")
                filename = f"{stem or ext}-{(new_sha or 'new')[:8]}{dot}{ext if stem else ''}"
            size = round(file["sizeKB"] * 1024) if isinstance((file or {}).get("sizeKB"), (int, float)) else None
            with db.connection_context():
                record = ModelUpdate.create(
                    model_id=model["id"], version_id=newest["id"], model_name=model.get("name"),
                    version_name=newest.get("name"), previous_version_id=previous.version_id, sha256=new_sha,
                    reason=why or reason, not_before=not_before, base_model=newest.get("baseModel"),
                    previous_base_model=previous.base_model, size=size, previous_path=previous.path,
                    subdir=previous.subdir if previous.subdir is not None else _subdir_of(previous, self.settings),
                    filename=filename,
                    state=UpdateState.PENDING.value if state == UpdateState.QUEUED else state.value)
        log.warning("upgrade: model %s '%s': version %s → %s (%s; %s)", model["id"], model.get("name"),
                    previous.version_id, newest["id"], why or reason, state.value)
        data = {"id": record.id, "modelId": model["id"], "modelVersionId": newest["id"],
                "model_name": model.get("name"), "version_name": newest.get("name"),
                "previous_version_id": previous.version_id, "reason": why or reason, "state": state.value,
                "not_before": iso(not_before)}
        if state == UpdateState.QUEUED:
            data["download_id"] = self.applier.enqueue(record, policy)
            self._tally["applied"] += 1
        elif state == UpdateState.WAITING:
            self._tally["waiting"] += 1
        else:
            key = why or {"ignored": "ignored", "pending": "notify"}.get(state.value, state.value)
            self._tally["skipped"][key] = self._tally["skipped"].get(key, 0) + 1
        self.bus.publish(events.MODEL_UPDATE, data)
        return data

    def _refresh_metadata(self, row, version):
        """Same file, newer metadata: refresh the stored info and the .civitai.info sidecar."""
        if not row.civitai_info or isinstance(row, _Adopted):
            return
        stored = json.loads(row.civitai_info)
        changed = {k: v for k, v in version.items() if k in ("name", "description", "trainedWords", "baseModel")
                   and stored.get(k) != v}
        if not changed:
            return
        stored.update(changed)
        text = json.dumps(stored, separators=(",", ":"))
        self.queue.update(row.id, civitai_info=text, version_name=stored.get("name"))
        if self.settings.sidecars and row.path:
            sidecars.refresh_info(row.path, row.civitai_info, text)  # only the daemon's own sidecar


class _Adopted:
    """A library entry seen by the check as if it were a completed download of its version."""

    def __init__(self, entry):
        self.entry = entry
        self.id = None  # sorts below any download of the same version
        self.version_id, self.model_id, self.sha256 = entry.version_id, entry.model_id, entry.sha256
        self.path, self.filename, self.subdir = entry.path, Path(entry.path).name, None
        self.civitai_info, self.base_model = entry.civitai_info, entry.base_model


def version_time(version):
    return parse_time(version.get("publishedAt")) or parse_time(version.get("createdAt"))


def _subdir_of(row, settings):
    """The folder of an earlier file: relative to download_dir, else absolute (a library root's folder)."""
    if not row.path:
        return None
    try:
        return str(Path(row.path).parent.relative_to(settings.download_dir)) or ""
    except ValueError:
        return str(Path(row.path).parent)
