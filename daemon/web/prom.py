"""The /metrics route in Prometheus text format, rendered with prometheus-client."""
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..states import Status


class _Collector:
    def __init__(self, queue, progress):
        self.queue = queue
        self.progress = progress

    def collect(self):
        counts = self.queue.counts()
        metrics = self.queue.metrics()
        by_state = GaugeMetricFamily("civitai_daemon_downloads", "Downloads by state", labels=["state"])
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        yield CounterMetricFamily("civitai_daemon_bytes", "Bytes of completed downloads", value=metrics["bytes"])
        yield CounterMetricFamily("civitai_daemon_retries", "Retried download attempts", value=metrics["retries"])
        yield CounterMetricFamily("civitai_daemon_hash_mismatches", "SHA256 mismatches",
                                  value=metrics["hash_mismatches"])
        yield GaugeMetricFamily("civitai_daemon_active_downloads", "Downloads in flight",
                                value=len(self.progress.snapshot()))
        yield GaugeMetricFamily("civitai_daemon_queue_length", "Downloads waiting",
                                value=counts.get(Status.QUEUED.value, 0))


def render(queue, progress):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(queue, progress))
    return generate_latest(registry), CONTENT_TYPE_LATEST
