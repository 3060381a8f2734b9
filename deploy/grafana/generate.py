#!/usr/bin/env python3
"""Writes kvmount.json, the Grafana dashboard for the node daemon's metrics (provider/src/metrics.rs)
and the webhook's (sidecar/src/server.rs). tests/deploy/test_deploy.py checks that every metric it
queries is one the sources register, and tests/python/test_metrics.py that a running daemon and
webhook expose each of them. Run: python3 deploy/grafana/generate.py [OUT]"""

import json
import pathlib
import sys

SEL = '{namespace=~"$namespace", pod=~"$pod"}'
S429 = '{namespace=~"$namespace", pod=~"$pod", status="429"}'
ERR = '{namespace=~"$namespace", pod=~"$pod", outcome="error"}'
# The webhook's pods are not the node daemon's ($pod lists those): by namespace only.
HOOK = '{namespace=~"$namespace"}'
DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []


def panel(title, exprs, unit="short", kind="timeseries", desc=""):
    n = len(panels)
    panels.append({
        "id": n + 1,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": (n % 2) * 12, "y": (n // 2) * 8, "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": ({"legend": {"displayMode": "table", "placement": "bottom"}} if kind == "timeseries"
                    else {"reduceOptions": {"calcs": ["lastNotNull"]}}),
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend} for i, (e, legend) in enumerate(exprs)],
    })


def rate(metric, sel=SEL):
    return f"rate({metric}{sel}[$__rate_interval])"


panel("Mounts / publishes per second by outcome",
      [(f"sum by (path, outcome) ({rate('kvmount_mounts_total')})", "{{path}} {{outcome}}")], "reqps",
      desc="Provider-API Mount (path=provider) and CSI NodePublishVolume (path=csi) calls.")
panel("Mount / publish errors per second by gRPC code",
      [(f"sum by (path, code) ({rate('kvmount_mounts_total', ERR)})", "{{path}} {{code}}")], "reqps",
      desc="InvalidArgument: the class or volume attributes (the daemon's log names the field); "
           "PermissionDenied / NotFound: Key Vault refused or has no such object; Unauthenticated: "
           "the pod's credential; Unavailable / DeadlineExceeded: Key Vault or Entra ID unreachable or throttling.")
panel("Mount latency (p50, p99)",
      [(f"histogram_quantile(0.5, sum by (le, path) ({rate('kvmount_mount_seconds_bucket')}))", "p50 {{path}}"),
       (f"histogram_quantile(0.99, sum by (le, path) ({rate('kvmount_mount_seconds_bucket')}))", "p99 {{path}}")], "s")
panel("Key Vault requests per second by vault and status",
      [(f"sum by (vault, status) ({rate('kvmount_keyvault_requests_total')})", "{{vault}} {{status}}")], "reqps",
      desc="Every HTTP try, retries included: what Key Vault's throttling counts.")
panel("Key Vault throttling (429) per vault",
      [(f"sum by (vault) ({rate('kvmount_keyvault_requests_total', S429)})", "{{vault}}")], "reqps",
      desc="Non-zero: lower provider.vaultQps, raise provider.rotationInterval, or split vaults.")
panel("Key Vault request latency (p99) by operation",
      [(f"histogram_quantile(0.99, sum by (le, vault, operation) ({rate('kvmount_keyvault_request_seconds_bucket')}))",
        "{{vault}} {{operation}}")], "s")
panel("Rotation checks in the range by outcome",
      [(f"sum by (outcome) (increase(kvmount_rotation_checks_total{SEL}[$__range]))", "{{outcome}}")], "short", kind="stat",
      desc="One read per cached object per node per rotation interval.")
panel("Volumes rewritten after a rotation",
      [(f"sum by (outcome) ({rate('kvmount_rotation_volume_updates_total')})", "{{outcome}}")], "ops")
panel("Node cache: objects and published volumes",
      [(f"sum by (pod) (kvmount_cached_objects{SEL})", "cached objects {{pod}}"),
       (f"sum by (pod) (kvmount_published_volumes{SEL})", "published volumes {{pod}}")], "short")
panel("Node cache hit ratio",
      [(f"sum({rate('kvmount_cache_hits_total')}) / clamp_min(sum({rate('kvmount_cache_hits_total')}) + sum({rate('kvmount_cache_misses_total')}), 1e-9)",
        "hit ratio")], "percentunit",
      desc="hits / (hits + misses); misses include the rotation's reads.")
panel("Cache entries erased per second",
      [(f"sum({rate('kvmount_cache_erased_total')})", "erased")], "ops",
      desc="Entries zeroed and dropped at the last unpublish, after the idle time, or when revoked in Key Vault.")
panel("Oldest object per vault: seconds since its last good Key Vault read",
      [(f"max by (vault) (kvmount_object_refresh_age_seconds{SEL})", "{{vault}}")], "s",
      desc="Grows past the rotation interval only while reads fail (the volumes keep the last good content). "
           "Alert when it passes a few rotation intervals; kvmount_object_refresh_age_seconds names the object.")
panel("Webhook admissions per second by decision",
      [(f"sum by (decision) ({rate('kvmount_webhook_admissions_total', HOOK)})", "{{decision}}")], "reqps",
      desc="inject: a pod got the agent; skip: not annotated or in a skipped namespace; deny: the pod's "
           "annotations or class cannot work (the answer names the annotation); malformed: not an AdmissionReview.")
panel("Webhook decision time (p50, p99)",
      [(f"histogram_quantile(0.5, sum by (le) ({rate('kvmount_webhook_admission_seconds_bucket', HOOK)}))", "p50"),
       (f"histogram_quantile(0.99, sum by (le) ({rate('kvmount_webhook_admission_seconds_bucket', HOOK)}))", "p99")], "s")
panel("Webhook serving certificate: time left",
      [(f"min by (pod) (kvmount_webhook_certificate_expiry_timestamp_seconds{HOOK}) - time()", "{{pod}}")], "s", kind="stat",
      desc="Self-managed certificates are renewed when 10% of their life is left; file certificates when cert-manager rewrites them.")


def variable(name, query):
    return {"name": name, "type": "query", "datasource": DS, "query": query, "includeAll": True, "multi": True,
            "current": {"text": "All", "value": "$__all"}, "refresh": 2}


dashboard = {
    "title": "kvmount",
    "uid": "kvmount-node",
    "tags": ["kvmount", "key-vault", "csi"],
    "description": "kvmount node daemon: mounts and their errors, Key Vault traffic and throttling, rotation, node cache, stale objects; the sidecar webhook.",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        variable("namespace", "label_values(kvmount_cached_objects, namespace)"),
        variable("pod", 'label_values(kvmount_cached_objects{namespace=~"$namespace"}, pod)'),
    ]},
    "panels": panels,
}
out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("kvmount.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
