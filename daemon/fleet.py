"""Fleet mode (SPEC §14): heartbeats, lease renewal and take-over, the fleet's share of `throttle`.

Every `lease`/3 seconds each daemon renews the leases of the downloads it is
working on, records its heartbeat, returns claims whose lease ran out to the
queue (their daemon died: another one resumes them from the shared part),
takes again the inbox files a dead daemon had claimed but not placed (or
placed, not recorded), files away its own manifests that other daemons
finished, and sets its part of `throttle` to its share of the fleet's active
downloads. With SQLite only the heartbeat is kept (one node).
"""
import datetime
import logging
import threading

import peewee

from .engines import is_postgres
from .models import DailyRun, Download, Node, db, iso, utcnow
from .states import Status

log = logging.getLogger("daemon.fleet")


class Fleet:
    def __init__(self, settings, queue, spool, throttle, active_ids):
        self.node = settings.node
        self.lease = settings.lease
        self.rate = settings.throttle      # the fleet's total cap
        self.queue = queue
        self.spool = spool
        self.throttle = throttle
        self.active_ids = active_ids       # callable: ids this daemon's workers hold
        self.interval = max(1.0, self.lease / 3)
        self._stop = threading.Event()
        self._thread = None

    @property
    def shared(self):
        return is_postgres()

    def start(self):
        self._heartbeat()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()
        if self.shared:
            log.info("fleet mode: node %s, lease %d s", self.node, self.lease)

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a lost database connection must not end the heartbeat for good
                log.exception("fleet heartbeat failed; trying again in %.0f s", self.interval)

    def beat(self):
        """One heartbeat: renew, record, take over lapsed claims, finish own manifests, share throttle."""
        self._heartbeat()
        if not self.shared:
            return
        self.queue.renew(self.active_ids())
        self.queue.reclaim_lapsed()
        self.spool.recover_claims(self.live_nodes())
        self.spool.adopt_orphans()
        self.spool.finish_own()
        self._share_throttle()

    def _heartbeat(self):
        now = utcnow()
        with db.connection_context():
            (Node.insert(name=self.node, started_at=now, last_heartbeat=now)
             .on_conflict(conflict_target=[Node.name], update={Node.last_heartbeat: now}).execute())

    def _share_throttle(self):
        """Each daemon caps itself at its share of the fleet's active downloads, so the sum holds."""
        if not self.rate:
            return
        with db.connection_context():
            counts = dict(Download.select(Download.node, peewee.fn.COUNT(Download.id))
                          .where(Download.state == Status.DOWNLOADING.value).group_by(Download.node).tuples())
        mine, everyone = counts.get(self.node, 0), sum(counts.values())
        share = self.rate if not mine or everyone <= mine else max(1, self.rate * mine // everyone)
        if share != self.throttle.rate:
            self.throttle.rate = share

    # -- queries -----------------------------------------------------------------
    def live_nodes(self):
        """Fleet mode: the names of the daemons whose last heartbeat is within the lease (None with SQLite)."""
        if not self.shared:
            return None
        since = utcnow() - datetime.timedelta(seconds=self.lease)
        with db.connection_context():
            return [name for (name,) in Node.select(Node.name).where(Node.last_heartbeat >= since).tuples()]

    def nodes(self):
        """GET /api/nodes: every daemon that ever joined, with its heartbeat and the downloads it holds."""
        with db.connection_context():
            rows = list(Node.select().order_by(Node.name))
            active = {}
            for download_id, node in (Download.select(Download.id, Download.node)
                                      .where(Download.state == Status.DOWNLOADING.value)
                                      .order_by(Download.id).tuples()):
                active.setdefault(node, []).append(download_id)
        return [{"node": r.name, "last_heartbeat": iso(r.last_heartbeat), "started_at": iso(r.started_at),
                 "active": active.get(r.name, [])} for r in rows]

    def claim_daily(self, job, day=None):
        """True for the first daemon of the fleet to ask for (`job`, `day`): it runs the job that day."""
        day = day or datetime.date.today().isoformat()
        with db.connection_context():
            DailyRun.insert(job=job, day=day, node=self.node).on_conflict_ignore().execute()
            row = DailyRun.get((DailyRun.job == job) & (DailyRun.day == day))
        return row.node == self.node
