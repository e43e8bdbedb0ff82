"""Prometheus metrics of the gateway, served at `/metrics`.

Three sources, each counted where it costs least:
- requests, latency, time to first token, failovers and ratings are counted as they happen
  (a middleware and a few calls in the proxy and the feedback writer);
- upstream health and the interaction log's queue are read from live objects at scrape time;
- training runs, gate numbers, adapter states and prompt drift come from the database,
  refreshed in the background (`DatabaseStats`), so a scrape never waits on a query and
  every gateway replica reports the same figures (sum them in PromQL with `max`, not `sum`).

Label values are bounded: routes are a fixed list, adapter versions and aliases are what the
registry serves, upstreams come from the settings. No per-user or per-request labels.
vLLM's own metrics (queue, KV cache, tokens per second) are scraped from vLLM, not repeated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.stats import StatsSnapshot

if TYPE_CHECKING:
    from gateway.state import GatewayState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/feedback", "/v1/models",
          "/health", "/ready", "/metrics")
TRAINING_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400)
FAILOVER_REASONS = ("unreachable", "broken", "status", "adapter_load", "upstream_auth")


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/responses/"):  # a stored response: its id is no label
        return "/v1/responses/{id}"
    return "/admin" if path.startswith("/admin") else "other"


class GatewayMetrics:
    """Every metric the gateway exports, on a registry of its own (one per app, so tests and
    several apps in one process never share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "loraloop_request_duration_seconds",
            "Requests by route and outcome: time until the last byte (the whole stream when streaming).",
            ["route", "status", "alias", "adapter_version", "arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "loraloop_time_to_first_token_seconds",
            "Streaming completions: time from arrival until the first chunk left for the client.",
            ["alias", "adapter_version", "arm"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter(
            "loraloop_tokens", "Tokens of served completions, from the upstream's usage report.",
            ["direction", "adapter_version", "arm"], registry=r)
        self.failovers = Counter(
            "loraloop_upstream_failovers",
            "Requests moved off an upstream before their first byte (unreachable, broken connection, 5xx).",
            ["upstream", "reason"], registry=r)
        self.feedback = Counter(
            "loraloop_feedback", "Ratings stored, by what served the rated answer.",
            ["rating", "adapter_version", "arm"], registry=r)
        self.signals = Counter(
            "loraloop_feedback_signals", "Feedback beyond a thumb stored (preference, edit, score, copied, "
            "regenerated), by what served the answer.", ["kind", "adapter_version", "arm"], registry=r)
        self.db_stats = StatsSnapshot()

    def bind(self, state: GatewayState) -> None:
        """Starts reading live state at scrape time; pre-creates the failover series at 0 so
        `rate()` and alerts see them before the first failover."""
        self.registry.register(_LiveCollector(state))
        self.registry.register(_DatabaseCollector(self))
        for replica in state.fleet.replicas:
            for reason in FAILOVER_REASONS:
                self.failovers.labels(replica.url, reason)

    def count_tokens(self, rows: Iterable[dict]) -> None:
        for row in rows:
            version, arm = row["adapter_version"] or "", row["arm"]
            if row["prompt_tokens"]:
                self.tokens.labels("prompt", version, arm).inc(row["prompt_tokens"])
            if row["completion_tokens"]:
                self.tokens.labels("completion", version, arm).inc(row["completion_tokens"])


class MetricsMiddleware:
    """Times every HTTP request (a pure ASGI middleware: it adds one wrapper per message, not
    a task per request). The completion routes leave their routing labels in
    `scope["state"]["route_labels"]`."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            alias, version, arm = scope.get("state", {}).get("route_labels", ("", "", ""))
            self.metrics.requests.labels(route_label(scope["path"]), str(status), alias, version, arm) \
                .observe(time.perf_counter() - started)


class _LiveCollector(Collector):
    """Upstreams and the interaction log, as they are at the moment of the scrape."""

    def __init__(self, state: GatewayState):
        self.state = state

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("loraloop_upstream_up", "1 while the upstream is in rotation.", labels=["upstream"])
        busy = GaugeMetricFamily("loraloop_upstream_in_flight", "Requests the gateway has open on the upstream.",
                                 labels=["upstream"])
        loaded = GaugeMetricFamily("loraloop_upstream_adapters_loaded", "Adapter versions the upstream holds.",
                                   labels=["upstream"])
        down = CounterMetricFamily("loraloop_upstream_down_events", "Times the upstream was taken out of rotation.",
                                   labels=["upstream"])
        for r in self.state.fleet.replicas:
            up.add_metric([r.url], float(r.healthy))
            busy.add_metric([r.url], r.in_flight)
            loaded.add_metric([r.url], len(r.loaded))
            down.add_metric([r.url], self.state.fleet.down_events.get(r.url, 0))
        log = self.state.log
        yield from (up, busy, loaded, down)
        yield GaugeMetricFamily("loraloop_interaction_log_queue_depth", "Interactions waiting to be written.",
                                value=log.queue.qsize())
        yield GaugeMetricFamily("loraloop_interaction_log_queue_capacity", "The queue's size limit.",
                                value=log.queue.maxsize)
        yield CounterMetricFamily("loraloop_interaction_log_dropped", "Interactions dropped: the queue was full.",
                                  value=log.dropped)
        yield CounterMetricFamily("loraloop_interaction_log_refused",
                                  "Interactions the database refused (unstorable values); dropped alone.",
                                  value=log.refused)
        yield CounterMetricFamily("loraloop_interaction_log_written", "Interactions committed to the database.",
                                  value=log.written)
        limiter = self.state.auth.limiter
        if limiter.shared is not None:  # only when rate limits are shared through Redis
            yield GaugeMetricFamily("loraloop_rate_limit_redis_up",
                                    "1 while rate limits hold across replicas; 0: Redis is away, each replica "
                                    "limits on its own.", value=float(limiter.redis_up))
            yield CounterMetricFamily("loraloop_rate_limit_redis_errors", "Rate-limit charges Redis did not answer.",
                                      value=limiter.redis_errors)


class _DatabaseCollector(Collector):
    """Figures from the database, as of the last background refresh."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        s = self.metrics.db_stats
        runs = CounterMetricFamily("loraloop_training_runs", "Finished training runs by method and outcome.",
                                   labels=["method", "outcome"])
        for (method, outcome), n in sorted(s.runs_finished.items()):
            runs.add_metric([method, outcome], n)
        yield runs
        yield GaugeMetricFamily("loraloop_training_runs_running", "Training runs in progress.", value=s.runs_running)
        yield GaugeMetricFamily("loraloop_training_consecutive_failures",
                                "Failed runs since the last one that finished (approved or rejected).",
                                value=s.consecutive_failures)
        yield GaugeMetricFamily("loraloop_training_last_finished_timestamp_seconds",
                                "When the last training run finished (unix time), 0 if none has.",
                                value=s.last_finished_ts)
        yield _histogram("loraloop_training_run_duration_seconds", "Wall time of finished training runs.",
                         s.run_durations, TRAINING_DURATION_BUCKETS)
        gate = GaugeMetricFamily("loraloop_gate_metric",
                                 "The eval gate's numbers for the last version it judged.", labels=["metric"])
        for name, value in sorted(s.gate_metrics.items()):
            gate.add_metric([name], value)
        yield gate
        yield GaugeMetricFamily("loraloop_gate_last_passed", "1 if the last version judged passed the gate.",
                                value=s.gate_passed)
        versions = GaugeMetricFamily("loraloop_adapter_versions", "Registered adapter versions by state.",
                                     labels=["state"])
        for state, n in sorted(s.versions_by_state.items()):
            versions.add_metric([state], n)
        yield versions
        drift = GaugeMetricFamily(
            "loraloop_prompt_drift",
            "Jensen-Shannon divergence (0..1) between recent prompts' words and those of the prompts "
            "the alias's champion was trained on.", labels=["alias"])
        for alias, value in sorted(s.prompt_drift.items()):
            drift.add_metric([alias], value)
        yield drift
        yield from _experiment_metrics(s)


def _experiment_metrics(s: StatsSnapshot) -> Iterable[Metric]:
    """The open experiment of each alias, as of its last judgement (adapters/experiments.py)."""
    def gauge(name: str, doc: str, labels: tuple[str, ...] = ("alias",)) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=list(labels))

    running = gauge("loraloop_experiment_running", "1 while the alias's experiment runs, 0 while paused.")
    share = gauge("loraloop_experiment_canary_share", "Share of the alias's users sent to the canary.")
    statistic = gauge("loraloop_experiment_log_lambda",
                      "The sequential test's statistic (log mixture likelihood ratio); decides at the threshold.")
    threshold = gauge("loraloop_experiment_threshold", "log(1/alpha): the statistic's decision level.")
    difference = gauge("loraloop_experiment_difference", "Canary thumbs-up rate minus the champion's.")
    ratings = gauge("loraloop_experiment_ratings", "Ratings per arm since the experiment started.", ("alias", "arm"))
    rate = gauge("loraloop_experiment_thumbs_up_rate", "Thumbs-up rate per arm since the start.", ("alias", "arm"))
    for alias, e in sorted(s.experiments.items()):
        running.add_metric([alias], e["running"])
        share.add_metric([alias], e["share"])
        if "log_lambda" in e:  # judged at least once
            statistic.add_metric([alias], e["log_lambda"])
            threshold.add_metric([alias], e["threshold"])
            difference.add_metric([alias], e["difference"])
            for arm, n in e["arms"].items():
                ratings.add_metric([alias, arm], n["ratings"])
                rate.add_metric([alias, arm], n["up"] / n["ratings"] if n["ratings"] else 0.0)
    yield from (running, share, statistic, threshold, difference, ratings, rate)
    ended = CounterMetricFamily("loraloop_experiments_ended", "Experiments decided, by outcome and by whom.",
                                labels=["outcome", "decided_by"])
    for (outcome, by), n in sorted(s.experiment_outcomes.items()):
        ended.add_metric([outcome, by], n)
    yield ended


def _histogram(name: str, documentation: str, values: list[float], buckets: tuple[float, ...]) -> Metric:
    cumulative = [(floatToGoString(b), float(sum(v <= b for v in values))) for b in buckets]
    cumulative.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=sum(values))
