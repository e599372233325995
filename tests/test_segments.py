"""Pure logic of segmented transfers: ranges, planning, work stealing, the prefix hash."""
import hashlib
import os
import random
import threading

from daemon.prefixhash import PrefixHasher
from daemon.segments import Planner, RangeSet, load_ranges, ranges_path, save_ranges

MiB = 1 << 20


def test_rangeset_merges_and_reports_gaps():
    r = RangeSet([(10, 20), (30, 40)])
    r.add(20, 30)  # touching both: one range
    assert r.spans == [(10, 40)]
    r.add(50, 60)
    r.add(55, 70)
    assert r.spans == [(10, 40), (50, 70)] and r.total() == 50
    assert r.gaps(100) == [(0, 10), (40, 50), (70, 100)]
    assert r.prefix() == 0 and RangeSet([(0, 5), (6, 9)]).prefix() == 5
    assert r.run_from(12) == 40 and r.run_from(45) is None


def test_plan_splits_into_connections_of_at_least_segment_min():
    p = Planner(256 * MiB, RangeSet(), 4, 16 * MiB)  # one piece per connection while that is at most 64 MiB
    assert [(s.start, s.end) for s in p.segments] == [(i * 64 * MiB, (i + 1) * 64 * MiB) for i in range(4)]
    small = Planner(100 * MiB, RangeSet(), 4, 64 * MiB)  # two 64 MiB pieces do not fit: one segment
    assert len(small.segments) == 1
    two = Planner(130 * MiB, RangeSet(), 4, 64 * MiB)
    assert len(two.segments) == 2 and all(s.end - s.start >= 64 * MiB for s in two.segments)
    assert len(Planner(16 * MiB + 3, RangeSet(), 4, 1 * MiB).segments) == 4  # an odd size still gives four


def test_a_big_file_is_cut_in_64_mib_pieces_claimed_in_file_order():
    p = Planner(1024 * MiB, RangeSet(), 4, 64 * MiB)  # four pieces per connection
    assert [(s.start, s.end) for s in p.segments] == [(i * 64 * MiB, (i + 1) * 64 * MiB) for i in range(16)]
    claimed = [p.claim(c) for c in "ABCD"]
    assert [s.start for s in claimed] == [0, 64 * MiB, 128 * MiB, 192 * MiB]  # the lowest free pieces
    p.advance(claimed[1], 64 * MiB)
    p.release(claimed[1])
    assert p.claim("B").start == 256 * MiB  # a finished connection takes the next piece in order
    assert len(Planner(100 * 1024 * MiB, RangeSet(), 4, 64 * MiB).segments) == 16  # 100 GiB: 16, not 1,600
    assert len(Planner(1024 * MiB + 15, RangeSet(), 4, 64 * MiB).segments) == 16
    assert len(Planner(1024 * MiB, RangeSet(), 4, 512 * MiB).segments) == 2  # never under segment_min
    assert [(s.start, s.end) for s in Planner(1024 * MiB, RangeSet(), 1, 64 * MiB).segments] == [(0, 1024 * MiB)]


def test_plan_covers_only_the_gaps_of_a_resumed_part():
    have = RangeSet([(0, 100), (300, 400)])
    p = Planner(1000, have, 2, 100)
    pieces = [(s.start, s.end) for s in p.segments]
    covered = RangeSet(pieces)
    assert covered.spans == [(100, 300), (400, 1000)]
    assert not any(a < 100 or (300 <= a < 400) for a, _ in pieces)


def test_claim_steals_the_second_half_of_a_slow_segment():
    now = [100.0]
    p = Planner(400, RangeSet(), 2, 50, clock=lambda: now[0])
    a, b = p.claim("A"), p.claim("B")
    assert (a.start, a.end, b.start, b.end) == (0, 200, 200, 400)
    assert p.advance(a, 200) == 0
    p.release(a)
    assert p.claim("A") is None and p.wants_steal()  # B's rate is not known yet: wait for it
    now[0] += 1.0
    p.advance(b, 20)  # B is slow: 20 bytes/s, 180 left = 9 s
    stolen = p.claim("A")
    assert (stolen.start, stolen.end) == (310, 400) and b.end == 310
    p.advance(b, 90)
    p.release(b)
    assert p.claim("B") is None and not p.wants_steal()  # 90 left in the stolen half: too little to split


def test_claim_next_hands_an_open_answer_the_free_piece_after_its_own():
    p = Planner(400, RangeSet(), 4, 100)
    first = p.claim("A", first=0)
    assert p.advance(first, 100) == 0
    assert p.claim_next("A", first, reach=400).start == 100  # the answer runs to 400: read on
    other = p.claim("B")  # piece 200-300
    p.advance(other, 100)
    nxt = p.claim_next("A", p.segments[1], reach=400)
    assert nxt is None  # 200-300 is B's: the stream's next bytes belong to someone else
    assert p.claim_next("B", other, reach=300) is None  # B's answer ends at its piece
    assert p.claim_next("B", other, reach=400).start == 300


def test_a_segment_about_to_finish_is_not_split():
    now = [0.0]
    p = Planner(1000, RangeSet(), 2, 100, clock=lambda: now[0])
    a, b = p.claim("A"), p.claim("B")
    p.advance(a, 500)
    p.release(a)
    now[0] += 1.0
    p.advance(b, 300)  # 300 bytes/s, 200 left: done in under a second
    assert p.claim("A") is None and not p.wants_steal()


def test_no_steal_below_twice_segment_min_and_released_segments_are_reclaimed():
    p = Planner(300, RangeSet(), 1, 100)
    seg = p.claim("A")
    p.advance(seg, 150)
    assert p.claim("B") is None  # 150 left < 2 × 100
    p.release(seg)  # A gives up (connection lost)
    again = p.claim("B")
    assert again is seg and again.pos == 150
    _, segments = p.snapshot()
    assert segments == [{"start": 0, "end": 300, "done": 150}]


def test_ranges_file_round_trip_and_garbage(tmp_path):
    part = tmp_path / "model.safetensors.7.part"
    save_ranges(part, {"etag": '"x"', "total": 10}, [(0, 4), (6, 8)])
    validator, have = load_ranges(part)
    assert validator == {"etag": '"x"', "total": 10} and have.spans == [(0, 4), (6, 8)]
    ranges_path(part).write_text("{not json")
    assert load_ranges(part) is None
    assert load_ranges(tmp_path / "none.part") is None


def _write_out_of_order(tmp_path, data, pieces, threads=1):
    path = tmp_path / "f.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        hasher = PrefixHasher(fd)
        def work(my):
            for a, b in my:
                os.pwrite(fd, data[a:b], a)
                hasher.feed(a, memoryview(data)[a:b])
        groups = [pieces[i::threads] for i in range(threads)]
        ts = [threading.Thread(target=work, args=(g,)) for g in groups]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return hasher
    finally:
        os.close(fd)


def test_prefix_hasher_in_order_reads_nothing_back(tmp_path):
    data = os.urandom(3 * MiB)
    pieces = [(i, min(i + 65536, len(data))) for i in range(0, len(data), 65536)]
    h = _write_out_of_order(tmp_path, data, pieces)
    assert h.prefix == len(data) and h.hexdigest() == hashlib.sha256(data).hexdigest() and h.reread == 0


def test_prefix_hasher_out_of_order_and_concurrent(tmp_path):
    data = os.urandom(2 * MiB + 123)
    rng = random.Random(5)
    cuts = sorted(rng.sample(range(1, len(data)), 60))
    pieces = list(zip([0] + cuts, cuts + [len(data)]))
    rng.shuffle(pieces)
    h = _write_out_of_order(tmp_path, data, pieces, threads=4)
    assert h.prefix == len(data) and h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert 0 < h.reread < len(data)  # pieces ahead came back from the page cache, not the whole file


def test_prefix_hasher_resumes_with_ranges_already_on_disk(tmp_path):
    data = os.urandom(1 * MiB)
    path = tmp_path / "f.part"
    path.write_bytes(data[:300_000] + b"\0" * 100_000 + data[400_000:600_000])
    fd = os.open(path, os.O_RDWR)
    try:
        hasher = hashlib.sha256(data[:300_000])  # the prefix hashed once at startup
        h = PrefixHasher(fd, hasher, prefix=300_000, ahead=[(400_000, 600_000)])
        for a, b in ((600_000, len(data)), (300_000, 400_000)):
            os.pwrite(fd, data[a:b], a)
            h.feed(a, memoryview(data)[a:b])
        assert h.prefix == len(data) and h.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)


def test_first_request_end_is_the_first_piece_of_the_plan():
    from daemon.segments import first_request_end
    assert first_request_end(1024 * MiB, RangeSet(), 4, 64 * MiB) == 64 * MiB
    assert first_request_end(256 * MiB, RangeSet(), 4, 16 * MiB) == 64 * MiB
    end = first_request_end(200 * MiB, RangeSet(), 4, 64 * MiB)  # three pieces of 66.7 MiB
    plan = Planner(200 * MiB, RangeSet(), 4, 64 * MiB, first_end=end)
    assert [(s.start, s.end) for s in plan.segments] == [(i * 200 * MiB // 3, (i + 1) * 200 * MiB // 3) for i in range(3)]
    assert first_request_end(100 * MiB, RangeSet(), 4, 64 * MiB) is None  # too small to split
    assert first_request_end(1024 * MiB, RangeSet(), 1, 64 * MiB) is None  # connections: 1
    holes = RangeSet([(0, 10 * MiB), (20 * MiB, 30 * MiB)])
    assert first_request_end(40 * MiB, holes, 4, 64 * MiB) == 20 * MiB  # a resumed part stops at its next range
    p = Planner(1024 * MiB, RangeSet(), 4, 64 * MiB, first_end=64 * MiB)
    assert [(s.start, s.end) for s in p.segments] == [(i * 64 * MiB, (i + 1) * 64 * MiB) for i in range(16)]
    odd = Planner(1024 * MiB, RangeSet(), 4, 64 * MiB, first_end=256 * MiB)  # an earlier run's bounded request
    assert odd.segments[0].end == 256 * MiB and all(s.end - s.start >= 64 * MiB for s in odd.segments)
    assert RangeSet((s.start, s.end) for s in odd.segments).spans == [(0, 1024 * MiB)]


def test_pipeline_hashes_and_writes_in_order_behind_the_receiver(tmp_path):
    from daemon.pipeline import Pipeline
    data = os.urandom(9 * MiB + 77)
    path = tmp_path / "p.part"
    path.write_bytes(data[:1000])  # a resumed part: the hash of its bytes carries on
    fd = os.open(path, os.O_RDWR)
    try:
        pipe = Pipeline(fd, 1000, hashlib.sha256(data[:1000]))
        pos, rng = 1000, random.Random(3)
        while pos < len(data):
            index, view = pipe.take()
            n = min(rng.randint(1, len(view)), len(data) - pos)
            view[:n] = data[pos:pos + n]
            pipe.hand_over(index, n)
            pos += n
        pipe.finish()
    finally:
        os.close(fd)
    assert pipe.written == len(data) and pipe.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data


def test_pipeline_hands_a_write_error_to_the_receiver(tmp_path):
    import pytest
    from daemon.pipeline import Pipeline
    path = tmp_path / "ro.part"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # every write fails
    try:
        pipe = Pipeline(fd, 0, hashlib.sha256())
        index, view = pipe.take()
        view[:10] = b"x" * 10
        pipe.hand_over(index, 10)
        with pytest.raises(OSError):
            for _ in range(10):
                index, view = pipe.take()
                pipe.hand_over(index, 0)
            pipe.finish()
        assert pipe.written == 0 and pipe.hasher.hexdigest() == hashlib.sha256().hexdigest()
    finally:
        os.close(fd)
