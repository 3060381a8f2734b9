"""/metrics of a running node daemon and a running webhook, read by an outside parser: the
Prometheus org's Python client (`prometheus_client.parser.text_string_to_metric_families`).

Checked: every family's type (counters typed counter with `_total` samples, latencies as
histograms with buckets, gauges), the gRPC `code` label within the fixed set of code names,
no label value or sample text holding a secret value, client secret or token of the test data,
the stale-object gauge per object, the webhook's decisions, decision histogram and certificate
expiry, and that every series the Grafana dashboard queries is exposed with the type its query
assumes.

Run (tests/run.sh does):
    KVMOUNT_MOCK_VAULT_CMD="target/debug/kvmount-provider mock-vault" \
    KVMOUNT_SIDECAR_BIN=target/debug/kvmount-sidecar pytest tests/python/test_metrics.py
"""

import json
import os
import pathlib
import re
import shlex
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvmount_support import Proc, scratch_dirs, stubs, webhook_process

ROOT = pathlib.Path(__file__).resolve().parents[2]
READY = re.compile(r"^kvmount mock vault ready (.*)$")
TENANT = "00000000-0000-0000-0000-000000000001"
APP = "00000000-0000-0000-0000-00000000000a"
APP_SECRET = "metrics-client-secret-4b1d"
WRONG_SECRET = "metrics-wrong-secret-77c2"
VALUES = ["metrics-canary-old-9f3e", "metrics-canary-current-51aa"]
SEED = f"""
tenantId: {TENANT}
identities:
  - name: app
    clientId: {APP}
    clientSecret: {APP_SECRET}
vaults:
  - name: metricsvault
    secrets:
      - {{ name: db-password, versions: ["{VALUES[0]}", "{VALUES[1]}"] }}
"""
# Every value the `code` label may take: gRPC's code names.
GRPC_CODES = {
    "OK", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}
DAEMON_TYPES = {
    "kvmount_mounts": "counter",
    "kvmount_mount_seconds": "histogram",
    "kvmount_keyvault_requests": "counter",
    "kvmount_keyvault_request_seconds": "histogram",
    "kvmount_rotation_checks": "counter",
    "kvmount_rotation_volume_updates": "counter",
    "kvmount_cache_hits": "counter",
    "kvmount_cache_misses": "counter",
    "kvmount_cache_erased": "counter",
    "kvmount_cached_objects": "gauge",
    "kvmount_published_volumes": "gauge",
    "kvmount_object_refresh_age_seconds": "gauge",
}
WEBHOOK_TYPES = {
    "kvmount_webhook_admissions": "counter",
    "kvmount_webhook_admission_seconds": "histogram",
    "kvmount_webhook_ready": "gauge",
    "kvmount_webhook_certificate_expiry_timestamp_seconds": "gauge",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text):
    """{family name: family} as the Prometheus client's parser reads the text format."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families, text
    return families


def check_types(families, expected):
    for name, kind in expected.items():
        assert name in families, f"{name} missing: {sorted(families)}"
        family = families[name]
        assert family.type == kind, f"{name} is {family.type}, not {kind}"
    for name, family in families.items():
        assert name.startswith("kvmount_"), name
        assert family.type in ("counter", "gauge", "histogram"), f"{name}: {family.type}"
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name == name + "_total", sample
            elif family.type == "histogram":
                assert sample.name in (name + "_bucket", name + "_sum", name + "_count"), sample
                if sample.name.endswith("_bucket"):
                    assert "le" in sample.labels, sample
            else:
                assert sample.name == name, sample
                assert not name.endswith("_total"), f"gauge {name} named like a counter"


def samples(families, name, suffix=""):
    family = families.get(name)
    return [s for s in family.samples if s.name == name + suffix] if family else []


def check_no_secret(text, families, secrets):
    for secret in secrets:
        assert secret not in text, f"{secret!r} in /metrics"
    for family in families.values():
        for sample in family.samples:
            for key, value in sample.labels.items():
                for secret in secrets:
                    assert secret not in value and secret not in key, (secret, sample)


# ---- the node daemon ----


class Daemon:
    """The mock vault and `serve` (provider socket, CSI socket, metrics) against it."""

    def __init__(self, tmp, shm):
        cmd = os.environ.get("KVMOUNT_MOCK_VAULT_CMD")
        if not cmd:
            pytest.fail("set KVMOUNT_MOCK_VAULT_CMD, e.g. 'target/debug/kvmount-provider mock-vault'")
        binary = shlex.split(cmd)[0]
        seed = os.path.join(tmp, "seed.yaml")
        pathlib.Path(seed).write_text(SEED)
        self.mock = Proc(shlex.split(cmd) + ["--seed", seed, "--listen", "127.0.0.1:0", "--tls-dir", os.path.join(tmp, "tls")])
        fields = dict(kv.split("=", 1) for kv in self.mock.ready_line(READY).group(1).split())
        url, ca, suffix = fields["url"], fields["ca"], fields["dns-suffix"]
        port = url.rsplit(":", 1)[1]
        self.socket = os.path.join(tmp, "kvmount.sock")
        self.metrics_port = free_port()
        self.daemon = Proc(
            [binary, "serve", "--provider-socket", self.socket, "--csi-socket", os.path.join(tmp, "csi.sock"),
             "--node-id", "metrics-node", "--state-dir", shm, "--rotation-interval", "1s", "--cache-idle", "60s",
             "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--keyvault-dns-suffix", suffix,
             "--authority-host", url, "--ca-file", ca, "--resolve", f"*.{suffix}=127.0.0.1:{port}",
             "--log-level", "debug"]
        )
        deadline = time.time() + 30
        while self.get("/readyz")[0] != 200:
            assert self.daemon.proc.poll() is None, self.daemon.log()
            assert time.time() < deadline, "never ready: " + self.daemon.log()[-3000:]
            time.sleep(0.05)
        import grpc

        self.pb, pb_grpc = stubs(tmp, "provider")
        self.channel = grpc.insecure_channel("unix:" + self.socket)
        self.stub = pb_grpc.CSIDriverProviderStub(self.channel)

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, "", ""
        except OSError:
            return 0, "", ""

    def mount(self, objects, secret=APP_SECRET):
        """The gRPC code name of one Mount."""
        import grpc

        attrs = {
            "keyvaultName": "metricsvault",
            "tenantID": TENANT,
            "objects": objects,
            "csi.storage.k8s.io/pod.name": "pod",
            "csi.storage.k8s.io/pod.namespace": "default",
            "csi.storage.k8s.io/pod.uid": "uid-pod",
        }
        req = self.pb.MountRequest(
            attributes=json.dumps(attrs),
            secrets=json.dumps({"clientid": APP, "clientsecret": secret}),
            target_path="/var/lib/kubelet/pods/uid-pod/volumes/kubernetes.io~csi/v/mount",
            permission="420",
        )
        try:
            self.stub.Mount(req, timeout=60)
            return "OK"
        except grpc.RpcError as e:
            return "".join(w.capitalize() for w in e.code().name.split("_"))

    def stop(self):
        self.channel.close()
        self.daemon.stop()
        self.mock.stop()


def objects(name, object_type="secret"):
    return f"array:\n  - |\n    objectName: {name}\n    objectType: {object_type}\n"


@pytest.fixture(scope="module")
def daemon():
    with scratch_dirs("kvmount-pytest-metrics.") as (tmp, shm):
        d = Daemon(tmp, shm)
        try:
            yield d
        finally:
            d.stop()


def test_daemon_metrics_parse_with_types_bounded_codes_and_no_secret(daemon):
    codes = [
        daemon.mount(objects("db-password")),
        daemon.mount(objects("db-password")),  # from the cache
        daemon.mount(objects("db-password", "nope")),
        daemon.mount(objects("missing")),
        daemon.mount(objects("db-password"), secret=WRONG_SECRET),
    ]
    assert codes == ["OK", "OK", "InvalidArgument", "NotFound", "Unauthenticated"], codes
    # Rotation reads the object in use once per second.
    deadline = time.time() + 20
    while True:
        status, content_type, text = daemon.get("/metrics")
        assert status == 200
        families = parse(text)
        if any(s.value > 0 for s in samples(families, "kvmount_rotation_checks", "_total")):
            break
        assert time.time() < deadline, "no rotation read counted:\n" + text
        time.sleep(0.2)
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    check_types(families, DAEMON_TYPES)

    mounts = samples(families, "kvmount_mounts", "_total")
    assert {s.labels["code"] for s in mounts} <= GRPC_CODES
    by_code = {s.labels["code"]: s.value for s in mounts if s.labels["path"] == "provider"}
    assert by_code == {"OK": 2, "InvalidArgument": 1, "NotFound": 1, "Unauthenticated": 1}, mounts
    for s in mounts:
        assert s.labels["outcome"] == ("ok" if s.labels["code"] == "OK" else "error"), s
        assert set(s.labels) == {"path", "outcome", "code"}, s
    count = samples(families, "kvmount_mount_seconds", "_count")
    assert [(s.labels, s.value) for s in count] == [({"path": "provider"}, 5)]
    buckets = samples(families, "kvmount_mount_seconds", "_bucket")
    assert [b.labels["le"] for b in buckets][-1] == "+Inf" and len(buckets) > 10

    assert samples(families, "kvmount_cache_hits", "_total")[0].value >= 1
    assert samples(families, "kvmount_cache_misses", "_total")[0].value >= 1
    requests = samples(families, "kvmount_keyvault_requests", "_total")
    assert {s.labels["vault"] for s in requests} == {"metricsvault"}, requests
    assert all(re.fullmatch(r"[1-5][0-9][0-9]|error", s.labels["status"]) for s in requests), requests
    ages = samples(families, "kvmount_object_refresh_age_seconds")
    assert [s.labels for s in ages] == [{"vault": "metricsvault", "object": "secret/db-password"}], ages
    assert 0 <= ages[0].value < 10, ages
    assert samples(families, "kvmount_published_volumes")[0].value == 0

    check_no_secret(text, families, VALUES + [APP_SECRET, WRONG_SECRET])
    assert daemon.get("/healthz")[0] == 200
    assert daemon.get("/nothing")[0] == 404


# ---- the webhook ----


@pytest.fixture(scope="module")
def webhook():
    """GET (or POST `body` to) a path of a running webhook: (status, Content-Type, body)."""
    with webhook_process() as (port, context):

        def request(path, body=None):
            req = urllib.request.Request(f"https://localhost:{port}{path}", data=body, method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(req, context=context, timeout=10) as r:
                    return r.status, r.headers.get("Content-Type", ""), r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, "", ""

        yield request


def test_webhook_metrics_parse_with_decisions_latency_and_certificate_expiry(webhook):
    cases = json.loads((ROOT / "sidecar/tests/fixtures/reviews.json").read_text())
    sent = {"inject": 0, "skip": 0, "deny": 0, "malformed": 1}
    for case in cases:
        status, _, _ = webhook("/mutate", json.dumps(case["review"]).encode())
        assert status == 200, case["name"]
        sent[{"patch": "inject"}.get(case["expect"], case["expect"])] += 1
    assert webhook("/mutate", b"not an AdmissionReview")[0] == 400
    status, content_type, text = webhook("/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
    families = parse(text)
    check_types(families, WEBHOOK_TYPES)

    decisions = {s.labels["decision"]: s.value for s in samples(families, "kvmount_webhook_admissions", "_total")}
    assert decisions == sent, decisions
    count = samples(families, "kvmount_webhook_admission_seconds", "_count")[0].value
    assert count == sum(sent.values())
    buckets = samples(families, "kvmount_webhook_admission_seconds", "_bucket")
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count
    assert samples(families, "kvmount_webhook_ready")[0].value == 1
    expiry = samples(families, "kvmount_webhook_certificate_expiry_timestamp_seconds")[0].value
    # The self-managed leaf lives 24 hours.
    assert time.time() + 23 * 3600 < expiry < time.time() + 25 * 3600, expiry
    # The review bodies carry names and annotations, none of which may become a label.
    for family in families.values():
        for s in family.samples:
            assert set(s.labels) <= {"decision", "le"}, s


def test_every_series_the_dashboard_queries_is_exposed_with_its_type(daemon, webhook):
    families = {**parse(daemon.get("/metrics")[2]), **parse(webhook("/metrics")[2])}
    dash = json.loads((ROOT / "deploy/grafana/kvmount.json").read_text())
    used = {n for p in dash["panels"] for t in p["targets"] for n in re.findall(r"\b(kvmount_[a-z_]+)", t["expr"])}
    assert used
    for name in sorted(used):
        if name.endswith("_total"):
            assert families.get(name[: -len("_total")]) and families[name[: -len("_total")]].type == "counter", name
        elif name.endswith("_bucket"):
            assert families.get(name[: -len("_bucket")]) and families[name[: -len("_bucket")]].type == "histogram", name
        else:
            assert families.get(name) and families[name].type == "gauge", name
