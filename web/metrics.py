"""GET /metrics: Prometheus text exposition (format 0.0.4) of this worker's counters and the scheduler's gauges.

Written out by hand (a few counters and one histogram) rather than with prometheus-client, whose default
registry is process-global state; each app owns its `Metrics`. With several gunicorn workers each worker
reports its own numbers (a scrape reaches one of them).
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator

import falcon

from .engine import EngineSlot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(pairs: dict) -> str:
    def escape(value) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}" if pairs else ""


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)     # per bucket, not cumulative
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]
        return out


class Metrics:
    """Thread-safe counters, updated by the request threads of one worker."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._disconnects = 0
        self._ttft = Histogram(TTFT_BUCKETS)

    def count_request(self, endpoint: str, method: str, status: str) -> None:
        with self._lock:
            key = (endpoint, method, status)
            self._requests[key] = self._requests.get(key, 0) + 1

    def count_tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self._prompt_tokens += prompt
            self._completion_tokens += completion

    def count_disconnect(self, *handles) -> None:
        """A client went away: cancel its requests' `handles` (their caches are freed at the next step)."""
        for handle in handles:
            handle.cancel()
        with self._lock:
            self._disconnects += 1

    def observe_first_token(self, seconds: float) -> None:
        with self._lock:
            self._ttft.observe(seconds)

    def timed(self, events: Iterable, started: float) -> Iterator:
        """`events`, observing the time from `started` (time.monotonic) to the first one."""
        first = True
        for event in events:
            if first:
                self.observe_first_token(time.monotonic() - started)
                first = False
            yield event

    def render(self, scheduler_stats: dict | None) -> str:
        with self._lock:
            lines = [
                "# HELP refengine_requests_total HTTP requests answered, by endpoint, method and status.",
                "# TYPE refengine_requests_total counter",
                *(f"refengine_requests_total{_labels({'endpoint': e, 'method': m, 'status': s})} {v}"
                  for (e, m, s), v in sorted(self._requests.items())),
                "# HELP refengine_prompt_tokens_total Prompt tokens of the generation requests.",
                "# TYPE refengine_prompt_tokens_total counter",
                f"refengine_prompt_tokens_total {self._prompt_tokens}",
                "# HELP refengine_generation_tokens_total Completion tokens sent to clients.",
                "# TYPE refengine_generation_tokens_total counter",
                f"refengine_generation_tokens_total {self._completion_tokens}",
                "# HELP refengine_client_disconnects_total Requests cancelled because the client went away.",
                "# TYPE refengine_client_disconnects_total counter",
                f"refengine_client_disconnects_total {self._disconnects}",
                "# HELP refengine_time_to_first_token_seconds From request received to first token generated.",
                "# TYPE refengine_time_to_first_token_seconds histogram",
                *self._ttft.lines("refengine_time_to_first_token_seconds"),
            ]
        lines += ["# HELP refengine_model_loaded 1 once the model is loaded and serving.",
                  "# TYPE refengine_model_loaded gauge",
                  f"refengine_model_loaded {int(scheduler_stats is not None)}"]
        stats = scheduler_stats or {}
        gauges = (("queue_depth", "Requests waiting for a place in the batch."),
                  ("batch_size", "Sequences in the current decode batch."),
                  ("running_requests", "Requests being generated."),
                  ("kv_reserved_bytes", "KV cache bytes reserved by the requests in flight (what they may need)."))
        for key, help_text in gauges:
            if key in stats:
                lines += [f"# HELP refengine_{key} {help_text}", f"# TYPE refengine_{key} gauge",
                          f"refengine_{key} {stats[key]}"]
        if "prefix_cache_hits" in stats:
            lines += ["# HELP refengine_prefix_cache_hits_total Requests that reused a cached prompt prefix.",
                      "# TYPE refengine_prefix_cache_hits_total counter",
                      f"refengine_prefix_cache_hits_total {stats['prefix_cache_hits']}",
                      "# HELP refengine_prefix_cache_reused_tokens_total Prompt tokens not prefilled thanks to it.",
                      "# TYPE refengine_prefix_cache_reused_tokens_total counter",
                      f"refengine_prefix_cache_reused_tokens_total {stats['prefix_cache_reused_tokens']}",
                      "# HELP refengine_prefix_cache_bytes KV bytes the prefix cache holds.",
                      "# TYPE refengine_prefix_cache_bytes gauge",
                      f"refengine_prefix_cache_bytes {stats['prefix_cache_bytes']}"]
        if "alive" in stats:
            lines += ["# HELP refengine_scheduler_alive 1 while the scheduler thread serves requests.",
                      "# TYPE refengine_scheduler_alive gauge", f"refengine_scheduler_alive {int(stats['alive'])}",
                      "# HELP refengine_failed_steps_total Scheduler steps that failed the requests in flight.",
                      "# TYPE refengine_failed_steps_total counter",
                      f"refengine_failed_steps_total {stats['failed_steps']}"]
        if "steps" in stats:
            lines += ["# HELP refengine_decode_steps_total Batched steps (decode tokens and prompt chunks) run by the scheduler.",
                      "# TYPE refengine_decode_steps_total counter", f"refengine_decode_steps_total {stats['steps']}"]
        return "\n".join(lines) + "\n"


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

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        stats = self.slot.get().scheduler.stats() if self.slot.ready else None
        resp.content_type = CONTENT_TYPE
        resp.text = self.metrics.render(stats)
