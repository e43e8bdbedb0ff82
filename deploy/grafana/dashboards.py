"""loraloop's Grafana dashboards, as code.

    python deploy/grafana/dashboards.py      # rewrites deploy/grafana/dashboards/*.json

The JSON files are generated, never edited by hand: the test suite fails when they differ
from what this script makes, and runs every query below against a real Prometheus scraping
a real gateway (tests/integration/test_prometheus.py), so each panel is known to show data.
Queries use the recording rules of deploy/prometheus/rules.yml where one exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
COMPLETIONS = 'route=~"/v1/(chat/)?completions"'


@dataclass
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(metric: str, by: str, selector: str = "") -> list[tuple[str, str]]:
    inner = f"sum by (le{', ' + by if by else ''}) (rate({metric}_bucket{{{selector}}}[5m]))"
    label = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, {inner})", f"{label}p{int(q * 100)}") for q in (0.5, 0.99)]


OVERVIEW = [
    Row("Traffic", [
        Panel("Completions per second by status",
              [("sum by (status) (loraloop:completion_requests:rate5m)", "{{status}}")], "reqps"),
        Panel("Completion error ratio (5xx)", [("loraloop:completion_error_ratio:rate5m", "5xx share")],
              "percentunit", description="Alert LoraloopHighErrorRate fires above 5% for 5 minutes."),
        Panel("Requests per second by route",
              [("sum by (route) (rate(loraloop_request_duration_seconds_count[5m]))", "{{route}}")], "reqps"),
    ]),
    Row("Latency", [
        Panel("Completion latency (last byte)",
              quantiles("loraloop_request_duration_seconds", "route", COMPLETIONS), "s"),
        Panel("Time to first token (streaming)", quantiles("loraloop_time_to_first_token_seconds", ""), "s"),
        Panel("Tokens per second", [("sum by (direction) (rate(loraloop_tokens_total[5m]))", "{{direction}}")],
              description="From the upstream's usage report; streams count only with stream_options.include_usage."),
    ]),
    Row("Upstreams (vLLM)", [
        Panel("Replicas in rotation", [("loraloop:upstreams_up", "up")], kind="stat"),
        Panel("In flight per replica", [("sum by (upstream) (loraloop_upstream_in_flight)", "{{upstream}}")]),
        Panel("Failovers per second",
              [("sum by (upstream, reason) (rate(loraloop_upstream_failovers_total[5m]))", "{{upstream}} {{reason}}")]),
        Panel("Replica taken out of rotation (per hour)",
              [("sum by (upstream) (increase(loraloop_upstream_down_events_total[1h]))", "{{upstream}}")]),
        Panel("vLLM requests running / waiting",
              [("sum by (instance) (vllm:num_requests_running)", "{{instance}} running"),
               ("sum by (instance) (vllm:num_requests_waiting)", "{{instance}} waiting")]),
        Panel("vLLM generated tokens per second",
              [("sum by (instance) (rate(vllm:generation_tokens_total[5m]))", "{{instance}}")]),
        Panel("vLLM KV cache usage", [("max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}")],
              "percentunit"),
    ]),
    Row("Interaction log", [
        Panel("Queue depth", [("max by (instance) (loraloop_interaction_log_queue_depth)", "{{instance}}")]),
        Panel("Written / dropped per second",
              [("sum(rate(loraloop_interaction_log_written_total[5m]))", "written"),
               ("sum(rate(loraloop_interaction_log_dropped_total[5m]))", "dropped")]),
    ]),
]

ADAPTERS = [
    Row("Arms", [
        Panel("Completions per second by adapter version and arm",
              [("sum by (adapter_version, arm) (loraloop:completion_requests:rate5m)", "{{arm}} {{adapter_version}}")],
              "reqps"),
        Panel("Thumbs-up ratio by adapter version and arm (1 h)",
              [("loraloop:thumbs_up_ratio:rate1h", "{{arm}} {{adapter_version}}")], "percentunit"),
        Panel("Ratings per second by arm",
              [("sum by (arm, rating) (rate(loraloop_feedback_total[5m]))", "{{arm}} {{rating}}")]),
        Panel("Share of completions rated (1 h)",
              [("sum(rate(loraloop_feedback_total[1h])) / sum(rate(loraloop_request_duration_seconds_count"
                f'{{{COMPLETIONS}, status="200"}}[1h]))', "rated")], "percentunit"),
        Panel("Completion latency by arm", quantiles("loraloop_request_duration_seconds", "arm", COMPLETIONS), "s"),
        Panel("Error ratio by arm",
              [('(sum by (arm) (loraloop:completion_requests:rate5m{status=~"5.."})'
                " or sum by (arm) (loraloop:completion_requests:rate5m) * 0)"
                " / sum by (arm) (loraloop:completion_requests:rate5m)", "{{arm}}")], "percentunit"),
    ]),
    Row("Experiments", [
        Panel("Sequential test: statistic and decision level",
              [("max by (alias) (loraloop_experiment_log_lambda)", "{{alias}} statistic"),
               ("max by (alias) (loraloop_experiment_threshold)", "{{alias}} decides here")],
              description="mSPRT log likelihood ratio (adapters/sequential.py); at the level, the canary is "
                          "promoted (it is better) or rolled back (worse)."),
        Panel("Thumbs-up rate per arm since the start",
              [("max by (alias, arm) (loraloop_experiment_thumbs_up_rate)", "{{alias}} {{arm}}")], "percentunit"),
        Panel("Ratings per arm since the start",
              [("max by (alias, arm) (loraloop_experiment_ratings)", "{{alias}} {{arm}}")]),
        Panel("Canary share of users", [("max by (alias) (loraloop_experiment_canary_share)", "{{alias}}")],
              "percentunit"),
        Panel("Experiments decided",
              [("max by (outcome, decided_by) (loraloop_experiments_ended_total)", "{{outcome}} by {{decided_by}}")]),
    ]),
    Row("Registry", [
        Panel("Adapter versions by state", [("max by (state) (loraloop_adapter_versions)", "{{state}}")]),
        Panel("Adapters loaded per replica",
              [("max by (upstream) (loraloop_upstream_adapters_loaded)", "{{upstream}}")]),
    ]),
]

TRAINING = [
    Row("Runs", [
        Panel("Finished runs by method and outcome",
              [("max by (method, outcome) (loraloop_training_runs_total)", "{{method}} {{outcome}}")]),
        Panel("Runs in progress", [("max(loraloop_training_runs_running)", "running")], kind="stat"),
        Panel("Failed runs in a row", [("max(loraloop_training_consecutive_failures)", "failed")], kind="stat",
              description="Alert LoraloopTrainingFailing fires at 3."),
        Panel("Since the last finished run",
              [("time() - max(loraloop_training_last_finished_timestamp_seconds)", "age")], "s", kind="stat"),
        Panel("Run duration",
              [("histogram_quantile(0.5, max by (le) (loraloop_training_run_duration_seconds_bucket))", "p50"),
               ("max(loraloop_training_run_duration_seconds_sum) / max(loraloop_training_run_duration_seconds_count)",
                "mean")], "s"),
    ]),
    Row("Eval gate", [
        Panel("Gate numbers of the last judged version", [("max by (metric) (loraloop_gate_metric)", "{{metric}}")],
              description="pair accuracy, sampled KL to the base, implausible share, repetition, win rate."),
        Panel("Last judged version passed", [("max(loraloop_gate_last_passed)", "passed")], kind="stat"),
    ]),
    Row("Data", [
        Panel("Ratings per second, up vs down",
              [("sum by (rating) (rate(loraloop_feedback_total[5m]))", "{{rating}}")]),
        Panel("Interactions logged per second", [("sum(rate(loraloop_interaction_log_written_total[5m]))", "logged")]),
        Panel("Prompt drift from the champion's training data",
              [("max by (alias) (loraloop_prompt_drift)", "{{alias}}")],
              description="Jensen-Shannon divergence of word frequencies, 0 (same) .. 1 (disjoint)."),
    ]),
]

DASHBOARDS = {
    "loraloop-overview": ("loraloop: overview", OVERVIEW),
    "loraloop-adapters": ("loraloop: adapters and experiments", ADAPTERS),
    "loraloop-training": ("loraloop: training and data", TRAINING),
}


def build(uid: str) -> dict:
    title, rows = DASHBOARDS[uid]
    panels: list[dict] = []
    y, next_id = 0, 1
    for row in rows:
        panels.append({"type": "row", "title": row.title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id, y = next_id + 1, y + 1
        for i, p in enumerate(row.panels):
            x, y_here = (i % 3) * 8, y + (i // 3) * 8
            panels.append({
                "type": p.kind, "title": p.title, "description": p.description, "id": next_id,
                "datasource": DATASOURCE, "gridPos": {"h": 8, "w": 8, "x": x, "y": y_here},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if p.kind == "timeseries" else
                {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
                "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
                            for j, (expr, legend) in enumerate(p.queries)],
            })
            next_id += 1
        y += 8 * ((len(row.panels) + 2) // 3)
    return {
        "uid": uid, "title": title, "tags": ["loraloop"], "timezone": "browser", "schemaVersion": 39,
        "editable": False, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}}]},
        "panels": panels,
    }


def render(uid: str) -> str:
    return json.dumps(build(uid), indent=2) + "\n"


def queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every query, for the tests."""
    return [(uid, p.title, expr) for uid, (_, rows) in DASHBOARDS.items()
            for row in rows for p in row.panels for expr, _ in p.queries]


if __name__ == "__main__":
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for uid in DASHBOARDS:
        (out / f"{uid}.json").write_text(render(uid))
        print(f"wrote {out / uid}.json")
