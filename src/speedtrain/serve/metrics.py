"""The Prometheus metrics of a server worker and their exposition at ``GET /metrics``.

Names (all ``speedtrain_``): ``requests_total`` (by endpoint and status), ``request_latency_seconds`` (200 answers
of ``POST /predict``), ``batch_size`` (texts per model call), ``queue_depth``, ``texts_total``,
``cache_hits_total``, ``cache_misses_total``. With ``PROMETHEUS_MULTIPROC_DIR`` set (several workers) each worker
writes to files there and /metrics sums them.
"""

from __future__ import annotations

import os


class Metrics:
    """The Prometheus metrics of a worker (summed over the workers when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: half the /metrics text, nothing a dashboard uses
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        kw = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter("speedtrain_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], **kw)
        self.latency = Histogram("speedtrain_request_latency_seconds", "POST /predict latency (200 answers)",
                                 buckets=(.0005, .001, .002, .003, .005, .008, .012, .02, .05, .1, .25, .5, 1, 2.5),
                                 **kw)
        self.batch = Histogram("speedtrain_batch_size", "texts per model call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), **kw)
        self.queue = Gauge("speedtrain_queue_depth", "texts waiting for the model", multiprocess_mode="livesum", **kw)
        self.texts = Counter("speedtrain_texts_total", "texts predicted (cached or not)", **kw)
        self.hits = Counter("speedtrain_cache_hits_total", "texts answered from the result cache", **kw)
        self.misses = Counter("speedtrain_cache_misses_total", "texts that went to the model", **kw)
        self.ok = self.requests.labels("/predict", "200")

    def on_batch(self, size: int, queued: int) -> None:
        self.batch.observe(size)
        self.queue.set(queued)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        if self.multiprocess:
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
