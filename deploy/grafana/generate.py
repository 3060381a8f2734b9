#!/usr/bin/env python3
"""Writes kvmount.json, the Grafana dashboard for the node daemon's metrics (provider/src:
metrics.rs, ratelimit.rs, daemon.rs, grpc/). tests/deploy/test_deploy.py checks that every
metric it queries is one the daemon exports. Run: python3 deploy/grafana/generate.py [OUT]"""

import json
import pathlib
import sys

SEL = '{namespace=~"$namespace", pod=~"$pod"}'
S429 = '{namespace=~"$namespace", pod=~"$pod", status="429"}'
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
      [(f"sum({rate('kvmount_cache_hits')}) / clamp_min(sum({rate('kvmount_cache_hits')}) + sum({rate('kvmount_cache_misses')}), 1e-9)",
        "hit ratio")], "percentunit",
      desc="hits / (hits + misses). The daemon exports these totals as gauges; they only grow, so rate() applies.")
panel("Cache entries erased per second",
      [(f"sum({rate('kvmount_cache_erased')})", "erased")], "ops",
      desc="Entries zeroed and dropped at the last unpublish or after the idle time.")


def variable(name, query):
    return {"name": name, "type": "query", "datasource": DS, "query": query, "includeAll": True, "multi": True,
            "current": {"text": "All", "value": "$__all"}, "refresh": 2}


dashboard = {
    "title": "kvmount",
    "uid": "kvmount-node",
    "tags": ["kvmount", "key-vault", "csi"],
    "description": "kvmount node daemon: mounts, Key Vault traffic and throttling, rotation, node cache.",
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
