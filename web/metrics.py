"""GET /metrics: Prometheus text exposition (format 0.0.4) through prometheus-client.

One process (the tests' in-process apps): each app owns a `CollectorRegistry`, so two apps never share
counts. Under `refengine serve` (gunicorn) the master sets PROMETHEUS_MULTIPROC_DIR before the workers start
(web/serve.py) and prometheus-client's multiprocess mode keeps every worker's values in files there: a scrape
reaching any worker reports the sum of all workers of the replica (each replica is scraped on its own).

The scheduler's gauges are sampled from the worker's scheduler: at every scrape by the worker answering it,
and every SAMPLE_S by each worker's sampler thread (so a scrape sees the other workers' gauges that recent);
they add up over the live workers (`livesum`). The scheduler's running totals (steps, prefix cache hits)
are counters advanced by what changed since the last sample.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Iterable, Iterator

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from .engine import EngineSlot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_S = 1.0                   # how stale another worker's scheduler gauges may be in a scrape

# scheduler stats key → (metric name, help): levels, summed over the live workers
SCHEDULER_GAUGES = {
    "queue_depth": ("refengine_queue_depth", "Requests waiting for a place in the batch."),
    "batch_size": ("refengine_batch_size", "Sequences in the current decode batch."),
    "running_requests": ("refengine_running_requests", "Requests being generated."),
    "kv_reserved_bytes": ("refengine_kv_reserved_bytes",
                          "KV cache bytes reserved by the requests in flight (what they may need)."),
    "prefix_cache_bytes": ("refengine_prefix_cache_bytes", "KV bytes the prefix cache holds."),
}
# scheduler stats key → (counter name without _total, help): running totals
SCHEDULER_TOTALS = {
    "prefix_cache_hits": ("refengine_prefix_cache_hits", "Requests that reused a cached prompt prefix."),
    "prefix_cache_reused_tokens": ("refengine_prefix_cache_reused_tokens", "Prompt tokens not prefilled thanks to it."),
    "failed_steps": ("refengine_failed_steps", "Scheduler steps that failed the requests in flight."),
    "steps": ("refengine_decode_steps", "Batched steps (decode tokens and prompt chunks) run by the scheduler."),
}


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


def _store_values_in_files() -> None:
    """prometheus-client picks where values live when it is imported; the master may have imported it before
    serve() set the folder, so a worker (which builds its metrics after the fork) picks again here."""
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()


class Metrics:
    """Counters updated by the request threads of one app (thread-safe, as prometheus-client's are)."""

    def __init__(self):
        self.multiprocess = multiprocess()
        self.registry = CollectorRegistry()          # what this app's /metrics reports
        if self.multiprocess:
            _store_values_in_files()
            MultiProcessCollector(self.registry)       # every worker's files, this one's included
        owned = None if self.multiprocess else self.registry   # multiprocess: values reach the scrape via files
        self.requests = Counter("refengine_requests", "HTTP requests answered, by endpoint, method and status.",
                                ("endpoint", "method", "status"), registry=owned)
        self.prompt_tokens = Counter("refengine_prompt_tokens", "Prompt tokens of the generation requests.",
                                     registry=owned)
        self.generation_tokens = Counter("refengine_generation_tokens", "Completion tokens sent to clients.",
                                         registry=owned)
        self.disconnects = Counter("refengine_client_disconnects",
                                   "Requests cancelled because the client went away.", registry=owned)
        self.first_token = Histogram("refengine_time_to_first_token_seconds",
                                     "From request received to first token generated.", buckets=TTFT_BUCKETS,
                                     registry=owned)
        # 1 only when every live worker has its model loaded (livemin): a replica half loaded is not ready
        self.model_loaded = Gauge("refengine_model_loaded", "1 once the model is loaded and serving.",
                                  registry=owned, multiprocess_mode="livemin")
        self.scheduler_alive = Gauge("refengine_scheduler_alive", "1 while the scheduler thread serves requests.",
                                     registry=owned, multiprocess_mode="livemin")
        self.model_loaded.set(0)                     # from the worker's start: until it has loaded its model,
        self.scheduler_alive.set(0)                  # the replica's minimum says "not ready"
        self.gauges = {key: Gauge(name, help_text, registry=owned, multiprocess_mode="livesum")
                       for key, (name, help_text) in SCHEDULER_GAUGES.items()}
        self.totals = {key: Counter(name, help_text, registry=owned)
                       for key, (name, help_text) in SCHEDULER_TOTALS.items()}
        self._sampled: dict[str, float] = {}         # the scheduler totals at the last sample
        self._lock = threading.Lock()

    def count_request(self, endpoint: str, method: str, status: str) -> None:
        self.requests.labels(endpoint, method, status).inc()

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)

    def count_disconnect(self, *handles) -> None:
        """A client went away: cancel its requests' `handles` (their caches are freed at the next step)."""
        for handle in handles:
            handle.cancel()
        self.disconnects.inc()

    def observe_first_token(self, seconds: float) -> None:
        self.first_token.observe(seconds)

    def timed(self, events: Iterable, started: float) -> Iterator:
        """`events`, observing the time from `started` (time.monotonic) to the first one."""
        first = True
        for event in events:
            if first:
                self.observe_first_token(time.monotonic() - started)
                first = False
            yield event

    def sample(self, scheduler_stats: dict | None) -> None:
        """Bring the scheduler's gauges and totals up to date (None: no model loaded yet)."""
        stats = scheduler_stats or {}
        with self._lock:                             # the sampler thread and a scrape may sample at once
            self.model_loaded.set(int(scheduler_stats is not None))
            if "alive" in stats:
                self.scheduler_alive.set(int(stats["alive"]))
            for key, gauge in self.gauges.items():
                if key in stats:
                    gauge.set(stats[key])
            for key, counter in self.totals.items():
                if key in stats and stats[key] > self._sampled.get(key, 0):
                    counter.inc(stats[key] - self._sampled.get(key, 0))
                    self._sampled[key] = stats[key]

    def render(self, scheduler_stats: dict | None) -> str:
        self.sample(scheduler_stats)
        return generate_latest(self.registry).decode("utf-8")


class MetricsMiddleware:
    """Counts every answered request by its route template (not its raw path: ids would explode labels)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        endpoint = req.uri_template or "unmatched"
        self.metrics.count_request(endpoint, req.method, str(resp.status_code))


class MetricsResource:
    def __init__(self, slot: EngineSlot, metrics: Metrics):
        self.slot, self.metrics = slot, metrics
        if metrics.multiprocess:                     # other workers' scrapes read this worker's gauges
            threading.Thread(target=self._sample_forever, name="refengine-metrics", daemon=True).start()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.text = self.metrics.render(self._stats())

    def _stats(self) -> dict | None:
        return self.slot.get().scheduler.stats() if self.slot.ready else None

    def _sample_forever(self) -> None:
        while True:
            self.metrics.sample(self._stats())
            time.sleep(SAMPLE_S)
