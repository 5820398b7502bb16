"""Prometheus metrics for ``GET /metrics`` (prometheus-client, text exposition format).

Names follow vLLM's (``vllm:time_to_first_token_seconds`` ... in vllm/v1/metrics/loggers.py)
with our own prefix, so a dashboard built for vLLM ports by renaming the prefix. Each server has
its own ``CollectorRegistry`` (tests start several in one process). Scheduler state — requests
running and waiting, KV-cache usage — is read at scrape time from the callables given to
``watch``, so it is never stale and costs nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .convlog import Entry

P = "oficina:"

# Buckets from vLLM's (loggers.py) cut to what a CPU or one GPU sees.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
               50.0, 60.0, 120.0, 240.0, 480.0)

# model -> (requests running, requests waiting, KV-cache usage 0..1)
SchedulerState = Callable[[], Mapping[str, tuple[int, int, float]]]


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(P + "requests", "Finished requests by route, model and finish reason",
                                ["route", "model", "finish_reason"], registry=r)
        self.errors = Counter(P + "request_errors", "Requests that failed, by route, model and kind",
                              ["route", "model", "kind"], registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token in seconds",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between consecutive tokens in seconds",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Request in to last byte out, in seconds",
                             ["model"], buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram(P + "request_queue_time_seconds", "Time spent waiting for a slot, in seconds",
                               ["model"], buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Tokens generated", ["model"], registry=r)
        self.cache_hits = Counter(P + "response_cache_hits", "Requests answered from the response cache",
                                  ["model"], registry=r)
        self.cache_queries = Counter(P + "response_cache_queries",
                                     "Repeatable requests looked up in the response cache", ["model"], registry=r)
        # in tokens, as vLLM's prefix_cache_queries / prefix_cache_hits: hit rate = hits / queries
        self.prefix_queries = Counter(P + "prefix_cache_queries", "Prompt tokens looked up for prefix reuse",
                                      ["model"], registry=r)
        self.prefix_hits = Counter(P + "prefix_cache_hits", "Prompt tokens reused from a cached prefix",
                                   ["model"], registry=r)
        self.cost = Counter(P + "cost", "What the answers cost, from the price table", ["model", "currency"],
                            registry=r)
        self.log_dropped = Counter(P + "log_entries_dropped", "Conversation-log entries that could not be "
                                   "written (database locked or disk full past the retry buffer)", registry=r)
        self._watched: list[SchedulerState] = []
        r.register(_SchedulerCollector(self._watched))

    def watch(self, state: SchedulerState) -> None:
        self._watched.append(state)

    def observe(self, e: Entry, gaps: Sequence[float] = (), currency: str = "USD") -> None:
        """One finished request. ``gaps``: seconds between consecutive streamed tokens."""
        model = e.model
        self.requests.labels(e.route, model, e.finish or ("error" if e.error else "stop")).inc()
        if e.failed:
            self.errors.labels(e.route, model, _kind(e)).inc()
        if e.ttft_s is not None:
            self.ttft.labels(model).observe(e.ttft_s)
        if e.total_s is not None:
            self.e2e.labels(model).observe(e.total_s)
        if e.queue_s is not None:
            self.queue.labels(model).observe(e.queue_s)
        itl = self.itl.labels(model)
        for g in gaps:
            itl.observe(g)
        if not e.cached:  # a cache hit processes nothing
            self.prompt_tokens.labels(model).inc(e.prompt_tokens)
            self.generation_tokens.labels(model).inc(e.output_tokens)
        if e.cost:
            self.cost.labels(model, currency).inc(e.cost)

    def error(self, route: str, model: str, kind: str) -> None:
        """A request refused before it produced an entry (bad input, unknown model, upstream down)."""
        self.errors.labels(route, model, kind).inc()

    def cache_lookup(self, model: str, hit: bool) -> None:
        self.cache_queries.labels(model).inc()
        if hit:
            self.cache_hits.labels(model).inc()

    def prefix(self, model: str, prompt_tokens: int, reused: int) -> None:
        self.prefix_queries.labels(model).inc(prompt_tokens)
        if reused:
            self.prefix_hits.labels(model).inc(reused)

    def dropped(self, n: int = 1) -> None:
        self.log_dropped.inc(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _SchedulerCollector:
    def __init__(self, states: list[SchedulerState]):
        self.states = states

    def collect(self) -> Iterable:
        running = GaugeMetricFamily(P + "num_requests_running", "Requests decoding now", labels=["model"])
        waiting = GaugeMetricFamily(P + "num_requests_waiting", "Requests queued for a slot", labels=["model"])
        kv = GaugeMetricFamily(P + "kv_cache_usage_perc", "Fraction of KV-cache slots in use (0 to 1)",
                               labels=["model"])
        for state in self.states:
            try:
                values = state()
            except Exception:  # a scrape must not fail because one model is unloading
                continue
            for model, (r, w, u) in values.items():
                running.add_metric([model], r)
                waiting.add_metric([model], w)
                kv.add_metric([model], u)
        return [running, waiting, kv]

    def describe(self) -> Iterable:
        return []


def _kind(e: Entry) -> str:
    """A bounded label (never the message: labels must stay few): the finish reason the server
    gave a failure (``error``, ``timeout``, ``upstream``, ...)."""
    return e.finish if e.finish and e.finish not in ("stop", "length") else "error"
