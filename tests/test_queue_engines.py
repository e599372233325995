"""The queue in process, on both engines: an SQLite file and a private PostgreSQL (SPEC §14).

Every test runs twice through the `engine` fixture; the fleet-only ones
(leases, shared pacing, the daily claim) run on PostgreSQL alone.
"""
import datetime
import threading
import time
import types

import peewee
import pytest
from conftest import wait_for

from daemon import models
from daemon.database import open_database
from daemon.events import Bus
from daemon.fleet import Fleet
from daemon.manifest import Item
from daemon.pacing import Pacer
from daemon.queue import Queue
from daemon.redact import Sealer
from daemon.states import Status
from daemon.views import Views


@pytest.fixture
def db(engine):
    handle = open_database(engine)
    yield handle
    handle.close()


def _queue(node="n1", lease=60):
    return Queue(Bus(), Views(), Sealer(b"k" * 32), node=node, lease=lease)


def _items(count, **extra):
    return [Item(index=i, url=f"https://files.example/{i}.bin", **extra) for i in range(count)]


def test_claims_follow_priority_then_arrival_and_record_the_node(db):
    queue = _queue()
    low = queue.enqueue(_items(2))
    high = queue.enqueue([Item(index=0, url="https://files.example/hi.bin", priority=5)])
    claimed = [queue.claim() for _ in range(3)]
    assert [row.id for row in claimed] == high + low
    assert all(row.state == Status.DOWNLOADING.value and row.node == "n1" for row in claimed)
    assert queue.claim() is None
    assert queue.finish(claimed[0].id, Status.COMPLETED).state == Status.COMPLETED.value
    assert queue.counts()[Status.DOWNLOADING.value] == 2


def test_same_content_twice_waits_for_the_first(db):
    queue = _queue()
    sha = "ab" * 32
    first, second = queue.enqueue([Item(index=0, url="https://a.example/x", sha256=sha),
                                   Item(index=1, url="https://b.example/y", sha256=sha)])
    assert queue.get(second).parent_id == first
    assert queue.claim().id == first
    assert queue.claim() is None  # the twin waits until its parent ended
    queue.finish(first, Status.COMPLETED)
    assert queue.claim().id == second


def test_concurrent_claimers_never_take_one_item_twice(db):
    queues = [_queue(node=f"n{i}") for i in range(3)]  # three daemons' worth of claimers
    ids = queues[0].enqueue(_items(40))
    taken, lock = [], threading.Lock()

    def work(queue):
        with models.db.connection_context():
            while (row := queue.claim()) is not None:
                with lock:
                    taken.append((row.id, row.node))
                queue.finish(row.id, Status.COMPLETED)

    threads = [threading.Thread(target=work, args=(queues[i % 3],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(i for i, _ in taken) == sorted(ids)
    assert queues[0].counts()[Status.COMPLETED.value] == 40


def test_ids_stay_unique_across_enqueuers(db):
    queues = [_queue(node=f"n{i}") for i in range(4)]
    found, lock = [], threading.Lock()

    def add(queue, n):
        with models.db.connection_context():
            for k in range(5):
                got = queue.enqueue([Item(index=0, url=f"https://u.example/{n}/{k}/{j}") for j in range(3)])
                with lock:
                    found.extend(got)

    threads = [threading.Thread(target=add, args=(q, n)) for n, q in enumerate(queues)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(found) == len(set(found)) == 60
    assert models.Download.select().count() == 60


def test_recover_returns_interrupted_claims(db, engine):
    mine, other = _queue(node="me"), _queue(node="other")
    a, b = mine.enqueue(_items(2))
    assert mine.claim().id == a and other.claim().id == b
    recovered = mine.recover()
    states = {a: mine.get(a).state, b: mine.get(b).state}
    if engine.startswith("postgresql://"):  # a fleet: the other daemon's live claim stays its own
        assert recovered == 1 and states == {a: "queued", b: "downloading"}
    else:  # one daemon per SQLite file: every claim was ours
        assert recovered == 2 and states == {a: "queued", b: "queued"}


def test_a_lapsed_lease_returns_to_the_queue_and_a_renewed_one_stays(pg_url):
    handle = open_database(pg_url)
    try:
        dead, alive, taker = _queue(node="dead", lease=5), _queue(node="alive", lease=5), _queue(node="t", lease=5)
        first, second = dead.enqueue(_items(2))
        assert dead.claim().id == first and alive.claim().id == second
        past = models.utcnow() - datetime.timedelta(seconds=30)
        models.Download.update(lease_until=past).execute()  # both leases ran out ...
        assert alive.renew([second]) == 1                     # ... but one daemon still renews its own
        assert taker.reclaim_lapsed() == [first]
        row = taker.claim()
        assert (row.id, row.node) == (first, "t")
        assert alive.get(second).state == "downloading"
    finally:
        handle.close()


def test_pacing_is_shared_by_every_daemon_of_the_fleet(pg_url):
    handle = open_database(pg_url)
    try:
        pacers = [Pacer("test-key", interval=0.5), Pacer("test-key", interval=0.5)]  # two daemons
        turns = []

        def caller(pacer):
            for _ in range(3):
                with pacer.turn() as ok:
                    assert ok
                    started = time.time()
                    time.sleep(0.1)  # the call itself: the next turn counts from its end
                    turns.append((started, time.time()))
        threads = [threading.Thread(target=caller, args=(p,)) for p in pacers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        turns.sort()
        assert len(turns) == 6
        # Never two at once, and each begins a full interval after the previous one ended, whoever took it.
        for (_, ended), (started, _) in zip(turns, turns[1:]):
            assert started - ended >= 0.49, turns
        stop = threading.Event()
        stop.set()
        with pacers[0].turn(stop) as ok:  # a stopping daemon does not wait for its turn
            assert ok is False
    finally:
        handle.close()


def test_the_daily_update_check_runs_on_one_daemon(pg_url):
    handle = open_database(pg_url)
    try:
        def fleet(node):
            settings = types.SimpleNamespace(node=node, lease=60, throttle=0)
            return Fleet(settings, _queue(node=node), spool=None, throttle=None, active_ids=list)
        one, two = fleet("one"), fleet("two")
        assert [one.claim_daily("update-check", "2026-12-01"), two.claim_daily("update-check", "2026-12-01")] \
            == [True, False]
        assert two.claim_daily("update-check", "2026-12-02") is True
    finally:
        handle.close()


def test_old_postgres_schema_gains_columns_and_keeps_rows(pg_url):
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('CREATE TABLE downloads (id SERIAL PRIMARY KEY, state VARCHAR(255) NOT NULL, url TEXT, '
                     'bytes BIGINT NOT NULL, priority INTEGER NOT NULL, created_at TIMESTAMP NOT NULL)')
        conn.execute("INSERT INTO downloads (state, url, bytes, priority, created_at) "
                     "VALUES ('completed', 'https://x.example/a', 42, 1, now())")
    handle = open_database(pg_url)
    try:
        row = models.Download.get_by_id(1)
        assert (row.state, row.bytes, row.attempts, row.node) == ("completed", 42, 0, None)
        assert _queue().enqueue(_items(1)) == [2]  # the id sequence carries on after the old rows
    finally:
        handle.close()


def test_each_daemon_takes_its_share_of_the_fleet_throttle(pg_url):
    handle = open_database(pg_url)
    try:
        queues = {node: _queue(node=node) for node in ("a", "b")}
        queues["a"].enqueue(_items(4))
        for node in ("a", "a", "a", "b"):  # a runs three downloads, b one
            queues[node].claim()
        throttles = {node: types.SimpleNamespace(rate=1_000_000) for node in queues}
        for node, queue in queues.items():
            settings = types.SimpleNamespace(node=node, lease=60, throttle=1_000_000)
            Fleet(settings, queue, spool=None, throttle=throttles[node], active_ids=list)._share_throttle()
        assert {n: t.rate for n, t in throttles.items()} == {"a": 750_000, "b": 250_000}
    finally:
        handle.close()


def test_a_connection_cut_by_the_server_is_replaced(pg_url):
    import psycopg
    handle = open_database(pg_url)
    try:
        queue = _queue()
        queue.enqueue(_items(1))
        before = models.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_url, autocommit=True) as admin:  # e.g. PostgreSQL restarted
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            wait_for(lambda: admin.execute(others).fetchone()[0] == 0, 10, message="the backend gone")
        with pytest.raises(peewee.OperationalError):
            queue.counts()  # the statement that finds the connection dead fails ...
        assert queue.counts()["queued"] == 1  # ... the next one runs on a new connection
        assert models.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != before
    finally:
        handle.close()
