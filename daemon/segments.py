"""Segment planning for one download over several connections (SPEC §12): the byte ranges
already on disk, the segments still to fetch, work stealing, and the small JSON file that
keeps the completed ranges across a crash.

Pure logic apart from `load_ranges` / `save_ranges`; the transfer itself is in `segmented.py`.
"""
import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from .filenames import fit_name

STEAL_ETA = 2.0  # a busy segment is split only when its own rate needs longer than this to finish it
# A big download is cut into pieces of about PIECE bytes, up to PIECES_PER_CONNECTION per
# connection, claimed in file order. The SHA-256 can only take the contiguous prefix: with one
# segment per connection the prefix grew at one connection's rate and three quarters of the file
# were hashed after the last byte came (bench/RESULTS.md, issue 15 profile). Pieces in order keep
# the prefix close behind the newest byte. A piece costs a new request (and on a CDN a TLS
# handshake), so no piece is cut below PIECE for ordering's sake.
PIECE = 64 << 20
PIECES_PER_CONNECTION = 4


class RangeSet:
    """Sorted, disjoint, merged half-open byte ranges [start, end)."""

    def __init__(self, spans=()):
        self.spans = []
        for start, end in spans:
            self.add(start, end)

    def add(self, start, end):
        if end <= start:
            return
        merged = []
        for a, b in self.spans:
            if b < start or a > end:     # disjoint and not touching
                merged.append((a, b))
            else:                        # overlapping or adjacent: absorb
                start, end = min(a, start), max(b, end)
        merged.append((start, end))
        merged.sort()
        self.spans = merged

    def total(self):
        return sum(b - a for a, b in self.spans)

    def prefix(self):
        """End of the contiguous run that starts at byte 0 (0 when byte 0 is missing)."""
        return self.spans[0][1] if self.spans and self.spans[0][0] == 0 else 0

    def gaps(self, size):
        """The ranges of [0, size) not in the set."""
        out, pos = [], 0
        for a, b in self.spans:
            if a > pos:
                out.append((pos, min(a, size)))
            pos = max(pos, b)
        if pos < size:
            out.append((pos, size))
        return [(a, b) for a, b in out if b > a]

    def run_from(self, pos):
        """The end of the range that covers `pos`, or None when `pos` is not in the set."""
        for a, b in self.spans:
            if a <= pos < b:
                return b
        return None

    def __eq__(self, other):
        return isinstance(other, RangeSet) and self.spans == other.spans

    def __repr__(self):
        return f"RangeSet({self.spans})"


@dataclasses.dataclass
class Segment:
    """Bytes [start, end) to fetch; `pos` is the next byte not yet written."""
    start: int
    end: int
    pos: int = None
    owner: object = None  # the connection working on it, None while unclaimed
    claimed_at: float = 0.0
    claimed_pos: int = 0

    def __post_init__(self):
        if self.pos is None:
            self.pos = self.start

    def eta(self, now):
        """Seconds this segment's connection needs for the rest at its rate so far (None: too early to say)."""
        elapsed = now - self.claimed_at
        got = self.pos - self.claimed_pos
        if elapsed < 0.5 or got <= 0:
            return None if elapsed < 0.5 else float("inf")
        return self.remaining / (got / elapsed)

    @property
    def remaining(self):
        return self.end - self.pos

    def as_dict(self):
        return {"start": self.start, "end": self.end, "done": self.pos - self.start}


class Planner:
    """Hands segments to connections and splits the slowest one when a connection is free.

    Thread-safe: every connection thread calls `claim`, `advance` and `release`.
    """

    def __init__(self, size, have, connections, segment_min, first_end=None, clock=time.monotonic,
                 steal_eta=STEAL_ETA, per_connection=PIECES_PER_CONNECTION):
        self.clock = clock
        self.steal_eta = steal_eta
        self.size = size
        self.segment_min = max(1, segment_min)
        self._lock = threading.Lock()
        self.have = RangeSet(have.spans if isinstance(have, RangeSet) else have)
        gaps = self.have.gaps(size)
        piece = piece_size(sum(b - a for a, b in gaps), connections, self.segment_min, per_connection)
        first = []
        if first_end is not None and gaps and gaps[0][0] < first_end < gaps[0][1]:
            # The first request already asked for [gap start, first_end): that piece is fixed.
            first = [gaps[0][:1] + (first_end,)]
            gaps[0] = (first_end, gaps[0][1])
        pieces = first + _cut(gaps, piece)
        self.segments = [Segment(a, b) for a, b in pieces]
        self.claims = 0  # segments handed out (a released one claimed again counts twice)

    def claim(self, owner, first=None):
        """The next segment for `owner`: the one starting at `first` if given, else an unclaimed one,
        else the second half of the segment with most left (if both halves are ≥ segment_min)."""
        with self._lock:
            now = self.clock()
            free = [s for s in self.segments if s.owner is None and s.remaining > 0]
            if first is not None:
                free = [s for s in free if s.pos == first] or free
            if free:
                seg = min(free, key=lambda s: s.pos)
                return self._give(seg, owner, now)
            slow = [s for s in self.segments if s.owner is not None and s.remaining >= 2 * self.segment_min
                    and (s.eta(now) or 0) >= self.steal_eta]
            if not slow:
                return None
            victim = max(slow, key=lambda s: s.remaining)
            middle = victim.pos + victim.remaining // 2
            stolen = Segment(middle, victim.end)
            victim.end = middle  # its connection stops at the new end
            self.segments.append(stolen)
            self.segments.sort(key=lambda s: s.start)
            return self._give(stolen, owner, now)

    def claim_next(self, owner, seg, reach):
        """The unclaimed segment that starts where `seg` ended, if the answer `owner` is reading runs to
        `reach` and covers it: the connection reads on instead of dropping the bytes in flight."""
        with self._lock:
            for s in self.segments:
                if s.owner is None and s.pos == seg.end and s.end <= reach and s.remaining > 0:
                    return self._give(s, owner, self.clock())
            return None

    def _give(self, seg, owner, now):
        self.claims += 1
        seg.owner, seg.claimed_at, seg.claimed_pos = owner, now, seg.pos
        return seg

    def wants_steal(self):
        """True when some busy segment is slow enough that a free connection should wait for a split."""
        with self._lock:
            now = self.clock()
            return any(s.owner is not None and s.remaining >= 2 * self.segment_min and
                       (s.eta(now) is None or s.eta(now) >= self.steal_eta) for s in self.segments)

    def reserve(self, seg, n):
        """Take up to `n` bytes at seg.pos for writing (fewer when a steal shortened the segment);
        returns (offset, count). The bytes count as done only after `commit`."""
        with self._lock:
            count = max(0, min(n, seg.end - seg.pos))
            offset = seg.pos
            seg.pos += count
            return offset, count

    def commit(self, offset, count):
        """Bytes [offset, offset + count) are written to the part."""
        with self._lock:
            self.have.add(offset, offset + count)

    def advance(self, seg, n):
        """reserve + commit in one step; returns how many more bytes the segment wants."""
        offset, count = self.reserve(seg, n)
        self.commit(offset, count)
        return seg.end - seg.pos

    def release(self, seg):
        """The connection stops working on `seg` (finished, or gave up: it can be claimed again)."""
        with self._lock:
            seg.owner = None
            if seg.remaining <= 0:
                self.segments.remove(seg)

    def finished(self):
        with self._lock:
            return not self.have.gaps(self.size)

    def done(self):
        with self._lock:
            return self.have.total()

    def snapshot(self):
        """The completed ranges and the segments (start, end, done) as plain data."""
        with self._lock:
            return list(self.have.spans), [s.as_dict() for s in self.segments]

    def in_flight(self):
        with self._lock:
            return sum(1 for s in self.segments if s.owner is not None)


def first_request_end(size, have, connections, segment_min, per_connection=PIECES_PER_CONNECTION):
    """Where the first request of a segmented download should stop (the end of the plan's first
    piece), or None when the download is not worth splitting. A bounded first request is never cut
    short, so no byte it carried is fetched again."""
    gaps = RangeSet(have).gaps(size) if not isinstance(have, RangeSet) else have.gaps(size)
    if not gaps:
        return None
    start, end = gaps[0]
    left = sum(b - a for a, b in gaps)
    if connections <= 1 or left < 2 * segment_min:
        return end if len(gaps) > 1 else None  # holes from an earlier run: stop at the first one
    return _cut([(start, end)], piece_size(left, connections, segment_min, per_connection))[0][1]


def piece_size(left, connections, segment_min, per_connection=PIECES_PER_CONNECTION):
    """The length segments are cut to: one per connection while that is at most PIECE, else pieces of
    at least PIECE, about `per_connection` per connection; never under segment_min."""
    if connections <= 1:
        return max(left, 1)
    even = left // connections  # floor: cutting by it gives at least `connections` pieces
    if even <= PIECE:
        return max(segment_min, even)
    return max(segment_min, PIECE, left // (connections * per_connection))


def _cut(gaps, piece):
    """Each gap in equal pieces of at least `piece` bytes (a shorter gap stays whole)."""
    pieces = []
    for a, b in gaps:
        k = max(1, (b - a) // piece)
        cuts = [a + (b - a) * i // k for i in range(k)] + [b]
        pieces += list(zip(cuts, cuts[1:]))
    return pieces


# -- the completed ranges beside the part -------------------------------------------

def ranges_path(part):
    """The JSON file that lists the completed ranges of `part`."""
    part = Path(part)
    return part.with_name(fit_name(part.name, ".ranges"))


def save_ranges(part, validator, spans):
    """Write the completed ranges atomically (a crash leaves the old or the new list, never half)."""
    path = ranges_path(part)
    tmp = _tmp_path(part)
    for _ in range(3):  # a new file, never through a link planted at the temp name
        tmp.unlink(missing_ok=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(f"cannot create {tmp.name}: something keeps appearing at its name")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({"validator": validator, "done": [list(s) for s in spans]}))
    os.replace(tmp, path)


def load_ranges(part):
    """(validator, RangeSet) from the file beside `part`, or None when there is none or it is unreadable."""
    try:
        fd = os.open(ranges_path(part), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read(16 << 20))
        spans = RangeSet((int(a), int(b)) for a, b in data["done"])
        return dict(data["validator"]), spans
    except (OSError, ValueError, KeyError, TypeError):
        return None


def drop_ranges(part):
    ranges_path(part).unlink(missing_ok=True)
    _tmp_path(part).unlink(missing_ok=True)


def _tmp_path(part):
    return Path(part).with_name(fit_name(Path(part).name, ".ranges.tmp"))
