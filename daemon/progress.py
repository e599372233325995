"""Live progress of running downloads, kept in memory (never one DB write per chunk)."""
import threading
import time


class Progress:
    """id → {bytes, total, speed, eta}; written by workers, read by the web side."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items = {}
        self.version = 0

    def start(self, download_id, offset, total, filename=None):
        with self._lock:
            now = time.monotonic()
            self._items[download_id] = {"filename": filename, "bytes": offset, "total": total, "speed": 0.0,
                                        "eta": None, "_t": now, "_b": offset}
            self.version += 1

    def advance(self, download_id, done, total):
        """Record bytes done; the speed is re-estimated about twice a second."""
        with self._lock:
            item = self._items.get(download_id)
            if item is None:
                return
            item["bytes"] = done
            item["total"] = total
            now = time.monotonic()
            elapsed = now - item["_t"]
            if elapsed >= 0.5:
                rate = (done - item["_b"]) / elapsed
                item["speed"] = rate if not item["speed"] else 0.5 * item["speed"] + 0.5 * rate
                item["_t"], item["_b"] = now, done
                if total and item["speed"] > 0:
                    item["eta"] = round(max(0, total - done) / item["speed"], 1)
            self.version += 1

    def segments(self, download_id, connections, segments):
        """A segmented download's open connections and its [{start, end, done}] (SPEC §12)."""
        with self._lock:
            item = self._items.get(download_id)
            if item is not None:
                item["connections"], item["segments"] = connections, segments
                self.version += 1

    def pop(self, download_id, default=None):
        with self._lock:
            self.version += 1
            return self._items.pop(download_id, default)

    def get(self, download_id):
        with self._lock:
            item = self._items.get(download_id)
            return _public(download_id, item) if item else None

    def snapshot(self):
        with self._lock:
            return [_public(k, v) for k, v in self._items.items()]


def _public(download_id, item):
    data = {"id": download_id, "filename": item["filename"], "bytes": item["bytes"], "total": item["total"],
            "speed": round(item["speed"], 1), "eta": item["eta"], "connections": item.get("connections", 1)}
    if item.get("segments"):
        data["segments"] = item["segments"]
    return data
