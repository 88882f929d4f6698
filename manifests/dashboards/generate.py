#!/usr/bin/env python3
"""Writes ebb's Grafana dashboards (the *.json files beside this script) from the panel list below, so that
every panel has the same variables, datasource and layout. Run it after changing a panel:

    python3 manifests/dashboards/generate.py

Each dashboard has three variables: `datasource` (any Prometheus), `namespace` and `service` (multi-select,
from the autoscaler's series). Expressions use `$__rate_interval`, which Grafana sets from the scrape interval.
tests/prometheus.rs evaluates every expression here against a real Prometheus.
"""
import json
import os

SEL = 'namespace=~"$namespace", service=~"$service"'
RATE = "$__rate_interval"


def quantiles(metric, by="", sel=SEL):
    """p50 and p99 of a histogram, per `by` labels."""
    group = f"le{', ' + by if by else ''}"
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
         f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""))
        for q in (0.5, 0.99)
    ]


def rate(metric, by, sel=SEL):
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RATE}]))"


# Per dashboard: its title and panels, each (title, unit, [(expr, legend)], description).
DASHBOARDS = {
    "service-overview": ("ebb / Service overview", [
        ("Requests per second", "reqps",
         [(rate("ebb_queue_proxy_requests_total", "namespace, service, status_class"),
           "{{service}} {{status_class}}")],
         "Requests the pods answered, by status class (the queue-proxies' count)."),
        ("Latency", "s",
         quantiles("ebb_queue_proxy_request_duration_seconds", "service"),
         "Arrival at the queue-proxy to the end of the response (streams end late)."),
        ("Time to first byte", "s",
         quantiles("ebb_queue_proxy_time_to_first_byte_seconds", "service"),
         "Arrival at the queue-proxy to the response headers, queueing included."),
        ("Desired vs ready pods", "short",
         [(f"sum by (service) (ebb_autoscaler_desired_pods{{{SEL}}})", "desired {{service}}"),
          (f"sum by (service) (ebb_autoscaler_ready_pods{{{SEL}}})", "ready {{service}}"),
          (f"sum by (service) (ebb_autoscaler_actual_pods{{{SEL}}})", "existing {{service}}")],
         "What the autoscaler wants, what is ready, and every pod that exists (starting or terminating too)."),
        ("Load vs capacity", "short",
         [(f"sum by (service) (ebb_autoscaler_observed_stable{{{SEL}}})", "stable window {{service}}"),
          (f"sum by (service) (ebb_autoscaler_observed_panic{{{SEL}}})", "panic window {{service}}"),
          (f"sum by (service) (ebb_autoscaler_target{{{SEL}}} * ebb_autoscaler_ready_pods{{{SEL}}})",
           "target x ready {{service}}")],
         "The scaling metric averaged over the stable and panic windows, against what the ready pods are meant to take."),
        ("Panic periods", "short",
         [(f"max by (service) (ebb_autoscaler_panic_mode{{{SEL}}})", "panic {{service}}")],
         "1 while the decider is in panic mode (it never scales down then)."),
        ("Serve or proxy mode", "short",
         [(f"max by (service) (ebb_autoscaler_serve_mode{{{SEL}}})", "serve {{service}}")],
         "1 in serve mode (pods in the path), 0 in proxy mode (the activator in the path)."),
    ]),
    "cold-start": ("ebb / Cold start", [
        ("Cold-start phases (p50)", "s",
         [(f"histogram_quantile(0.5, sum by (le) (rate({m}_bucket{{{SEL}}}[{RATE}])))", legend)
          for m, legend in [
              ("ebb_autoscaler_cold_start_decision_seconds", "first request -> decision"),
              ("ebb_activator_cold_start_pod_created_seconds", "first request -> pod exists"),
              ("ebb_activator_cold_start_pod_ready_seconds", "pod exists -> ready"),
              ("ebb_activator_cold_start_first_byte_seconds", "ready -> first byte"),
          ]],
         "Where a cold start's time goes, measured where each boundary is seen (docs/metrics.md)."),
        ("Cold-start wait", "s",
         quantiles("ebb_activator_cold_start_wait_seconds", "service"),
         "The whole wait of the requests the activator held through a cold start."),
        ("Cold starts", "short",
         [(rate("ebb_activator_cold_start_pod_ready_seconds_count", "service").replace("rate(", "increase("),
           "{{service}}")],
         "Cold starts that ended (a pod became ready for a service that had none) per interval."),
        ("Buffered requests", "short",
         [(f"sum by (service) (ebb_activator_queued{{{SEL}}})", "{{service}}")],
         "Requests the activators hold, waiting for a pod with capacity."),
        ("Activator queue wait", "s",
         quantiles("ebb_activator_queue_wait_seconds", "service"),
         "How long requests waited in the activator for capacity, cold or not."),
        ("Scale patch latency", "s",
         quantiles("ebb_autoscaler_scale_patch_seconds", "service"),
         "A decision that changed replicas until the API server accepted the patch (a cluster only)."),
    ]),
    "data-plane": ("ebb / Data plane", [
        ("Queue-proxy time to first byte", "s",
         quantiles("ebb_queue_proxy_time_to_first_byte_seconds", "service"),
         "Includes the model's own time to first token; compare with the model's metrics for ebb's share."),
        ("Queue depth", "short",
         [(f"sum by (service) (ebb_queue_proxy_queued{{{SEL}}})", "queue-proxies {{service}}"),
          (f"sum by (service) (ebb_activator_queued{{{SEL}}})", "activators {{service}}"),
          (f"sum by (service) (ebb_queue_proxy_in_flight{{{SEL}}})", "in flight at pods {{service}}")],
         "Requests waiting for a concurrency slot at the pods and in the activators."),
        ("Queue-proxy errors by reason", "reqps",
         [(rate("ebb_queue_proxy_errors_total", "service, reason"), "{{service}} {{reason}}")],
         "503s (overloaded), 504s (timeouts) and 502s (upstream failures) the queue-proxies answered."),
        ("Activator rejections by reason", "reqps",
         [(rate("ebb_activator_rejected_total", "service, reason"), "{{service}} {{reason}}")],
         "Requests the activators answered with an error: queue full, activation timeout, blocked service..."),
        ("Timeouts by kind", "reqps",
         [(rate("ebb_queue_proxy_timeouts_total", "service, kind"), "{{service}} {{kind}}")],
         "Requests cut by the total, response-start or idle timeout."),
        ("Breaker rejections", "reqps",
         [(rate("ebb_queue_proxy_breaker_rejections_total", "service"), "{{service}}")],
         "Requests refused because the per-pod concurrency limit and queue were full."),
        ("Pods ready for the activator", "short",
         [(f"max by (service) (ebb_activator_ready_pods{{{SEL}}})", "{{service}}")],
         "Pods that answered the activator's probe."),
    ]),
    "control-plane": ("ebb / Control plane", [
        ("Scrape errors", "short",
         [(rate("ebb_autoscaler_scrape_errors_total", "service"), "{{service}}")],
         "Pod stat scrapes that failed, per second."),
        ("Stats received", "short",
         [("sum by (source) (rate(ebb_autoscaler_stats_received_total[$__rate_interval]))", "{{source}}")],
         "Stats the autoscaler took in: scraped from pods, pushed by activators."),
        ("Tick duration", "s",
         [(f"histogram_quantile({q}, sum by (le) (rate(ebb_autoscaler_tick_duration_seconds_bucket[{RATE}])))",
           f"p{int(q * 100)}") for q in (0.5, 0.99)],
         "Time one decision tick over every service takes."),
        ("Decisions by reason", "short",
         [(rate("ebb_autoscaler_policy_decisions_total", "kind"), "{{kind}}")],
         "What drove decisions: the scale policy's reason kinds."),
        ("Activator stats dropped", "short",
         [(f"sum(rate(ebb_activator_stats_dropped_total[{RATE}]))", "dropped")],
         "Stat frames the activators dropped per second because an autoscaler was unreachable or slow."),
        ("Leader", "short",
         [("max by (pod) (ebb_autoscaler_leader)", "{{pod}}")],
         "1 on the autoscaler replica that holds the Lease (a cluster only)."),
        ("API server reachable", "short",
         [("min by (pod) (ebb_autoscaler_api_reachable)", "{{pod}}")],
         "1 while the Kubernetes API server answers (a cluster only)."),
        ("API-side problems", "short",
         [(rate("ebb_autoscaler_config_errors_total", "service"), "config errors {{service}}"),
          (rate("ebb_autoscaler_external_replica_changes_total", "service"), "replicas changed by others {{service}}"),
          (rate("ebb_autoscaler_scale_downs_held_total", "service, reason"), "scale-downs held {{service}}: {{reason}}")],
         "Invalid configuration, fights over replicas, scale-downs held back (a cluster only)."),
        ("Blocked pods", "short",
         [(f"sum by (service, kind) (ebb_autoscaler_blocked_pods{{{SEL}}})", "{{service}} {{kind}}")],
         "Pods stuck unschedulable, pulling their image or crash-looping (a cluster only)."),
    ]),
}


def variable(name, query):
    return {
        "name": name, "label": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "includeAll": True,
        "multi": True, "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(uid, title, panels):
    out = []
    for i, (panel_title, unit, targets, description) in enumerate(panels):
        out.append({
            "id": i + 1, "type": "timeseries", "title": panel_title, "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(targets)],
        })
    return {
        "uid": f"ebb-{uid}", "title": title, "tags": ["ebb", "autoscaling"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            variable("namespace", "label_values(ebb_autoscaler_desired_pods, namespace)"),
            variable("service", 'label_values(ebb_autoscaler_desired_pods{namespace=~"$namespace"}, service)'),
        ]},
        "panels": out,
    }


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for uid, (title, panels) in DASHBOARDS.items():
        with open(os.path.join(here, f"{uid}.json"), "w") as f:
            json.dump(dashboard(uid, title, panels), f, indent=2)
            f.write("\n")
