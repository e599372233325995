"""The total download rate cap shared by every worker (SPEC §4 `throttle`)."""
import threading
import time

from .errors import Cancelled

READ_SIZE = 4 << 20  # large reads: fewest Python iterations per GiB


class Throttle:
    """A rate cap shared by all workers: each read reserves the next time slot."""

    def __init__(self, rate):
        self.rate = rate
        self._next = 0.0
        self._lock = threading.Lock()

    def read_size(self):
        # Under a cap every read is one turn of at most 64 KiB: readers take turns of equal size,
        # so the cap is shared fairly. (With large reads each turn was as long as whatever the
        # socket buffer held, and a download with a small buffer stayed starved.)
        return READ_SIZE if not self.rate else max(16 << 10, min(64 << 10, self.rate // 64))

    # Time a reader spends between its slots (hashing, writing, waking up) is credited up to this
    # many seconds; without it a single download lost that time every slot and ran at ~0.88 × cap
    # (bench/RESULTS.md). It also bounds the burst after an idle spell to SLACK × rate.
    SLACK = 0.1

    def take(self, amount, stop):
        """Wait for the slot of `amount` bytes; raises Cancelled when `stop` is set meanwhile."""
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now - self.SLACK, self._next)
            self._next = start + amount / self.rate
            wait = self._next - now
        if wait > 0 and stop.wait(wait):
            raise Cancelled("stopped")
