"""What the connections of segmented downloads share (SPEC §12): the connection budget per host
across all downloads, and one download's signed link, renewed once for all its segments.
"""
import threading


class HostSlots:
    """Connections per host across all downloads (`max_connections_per_host`)."""

    def __init__(self, limit):
        self.limit = max(1, limit)
        self._used = {}
        self._lock = threading.Lock()

    def take(self, host, wanted):
        """Up to `wanted` connections to `host`; always at least one (the download's own)."""
        with self._lock:
            used = self._used.get(host, 0)
            granted = max(1, min(wanted, self.limit - used))
            self._used[host] = used + granted
            return granted

    def give_back(self, host, count):
        with self._lock:
            self._used[host] = max(0, self._used.get(host, 0) - count)


class Link:
    """The signed link all segments share; a refused link is renewed once for all of them."""

    def __init__(self, url, renew):
        self.url = url
        self.generation = 0
        self.renewals = 0
        self._renew = renew
        self._lock = threading.Lock()

    def current(self):
        with self._lock:
            return self.url, self.generation

    def renew(self, generation):
        """A fresh link, unless another segment already got one after `generation` was refused."""
        with self._lock:
            if self.generation == generation:
                self.url = self._renew()
                self.generation += 1
                self.renewals += 1
            return self.url
