"""kvmount-sidecar webhook against the Kubernetes JSON schemas.

Every case of sidecar/tests/fixtures/reviews.json is sent to the real webhook over HTTPS
(self-managed TLS, its CA written with --ca-bundle-out). Patches are applied to the original
pod with the `jsonpatch` package (RFC 6902, strict about paths), and the patched pod is
validated with `kubernetes-validate` in strict mode (unknown fields are errors) for Kubernetes
1.29 (the first release with native sidecars on by default) and the newest schema bundled, then
checked against the apiserver's rules that no schema states (unique container names, unique
mount paths per container, volumes that exist, requests at most limits). The init-only case is
also validated as the pod template of a batch/v1 Job.

Run:
    KVMOUNT_SIDECAR_BIN=target/debug/kvmount-sidecar pytest tests/python
"""

import base64
import copy
from decimal import Decimal
import json
import os
import pathlib
import urllib.request

import jsonpatch
import kubernetes_validate
import pytest

from kvmount_support import webhook_process

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES = json.loads((ROOT / "sidecar/tests/fixtures/reviews.json").read_text())
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


CA_FILE = "/var/run/secrets/kvmount.io/ca/ca.crt"
# The webhook as the chart runs it by default, and with extra trusted roots for the agents.
CONFIGS = {"plain": [], "agent-ca": ["--agent-ca-configmap", "corp-roots", "--agent-ca-key", "roots.pem"]}


class Webhook:
    def __init__(self, port, context, flags):
        self.port = port
        self.flags = flags
        self.context = context

    def post(self, review):
        req = urllib.request.Request(
            f"https://localhost:{self.port}/mutate",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, context=self.context, timeout=10) as resp:
            assert resp.status == 200
            return json.loads(resp.read())


@pytest.fixture(scope="module", params=list(CONFIGS))
def webhook(request):
    with webhook_process(CONFIGS[request.param]) as (port, context):
        yield Webhook(port, context, CONFIGS[request.param])


SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
            "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity(text):
    """A Kubernetes quantity as an exact Decimal (the apiserver's resource.Quantity)."""
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * SUFFIXES[suffix]
    return Decimal(text)


def apiserver_rules(pod, label):
    """What the apiserver checks beyond the schema (pkg/apis/core/validation): container names
    unique across containers and initContainers, mount paths unique per container, every
    mount's volume declared, volume names unique, requests at most limits."""
    spec = pod["spec"]
    containers = spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", [])
    names = [c["name"] for c in containers]
    assert len(names) == len(set(names)), f"{label}: duplicate container names {names}"
    volumes = [v["name"] for v in spec.get("volumes", [])]
    assert len(volumes) == len(set(volumes)), f"{label}: duplicate volume names {volumes}"
    for c in containers:
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), f"{label}: container {c['name']} mounts two volumes at one path: {paths}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{label}: container {c['name']} mounts volume {m['name']}, which does not exist"
        resources = c.get("resources", {})
        for kind, limit in resources.get("limits", {}).items():
            request = resources.get("requests", {}).get(kind)
            if request is not None:
                assert quantity(request) <= quantity(limit), f"{label}: container {c['name']} requests {kind} {request} above its limit {limit}"


def validate(obj, label):
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{label} is not a valid {obj['kind']} for Kubernetes {version}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_review(webhook, case):
    review = case["review"]
    original = review["request"]["object"]
    validate(original, "the original pod")
    answer = webhook.post(review)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    expect = case["expect"]
    if expect == "skip":
        assert response["allowed"] is True
        assert "patch" not in response
        return
    if expect == "deny":
        assert response["allowed"] is False
        message = response["status"]["message"]
        assert f"annotation {case['annotation']}:" in message, message
        return
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {op["op"] for op in ops} <= {"add", "replace"}
    patched = jsonpatch.apply_patch(copy.deepcopy(original), ops)
    validate(patched, "the patched pod")
    apiserver_rules(original, "the original pod")
    apiserver_rules(patched, "the patched pod")
    assert patched["metadata"]["annotations"]["kvmount.io/status"] == "injected"
    # Nothing of the original is lost: every original container is still there, in order.
    names = [c["name"] for c in patched["spec"]["containers"]]
    assert names[: len(original["spec"]["containers"])] == [c["name"] for c in original["spec"]["containers"]]
    if webhook.flags:
        check_agent_ca(patched)
    if case["name"] == "job-init-only":
        template_meta = {k: v for k, v in patched["metadata"].items() if k in ("labels", "annotations")}
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "nightly", "namespace": "team-a"},
            "spec": {"template": {"metadata": template_meta, "spec": patched["spec"]}},
        }
        validate(job, "the Job with the patched pod template")
        assert all(c.get("restartPolicy") != "Always" for c in patched["spec"]["initContainers"])


def check_agent_ca(pod):
    """With --agent-ca-configmap, every agent and every exec-wrapped command trusts the
    ConfigMap's roots: the volume names the ConfigMap and key, each mounts it read-only and
    passes --ca-file at the file the volume holds."""
    spec = pod["spec"]
    volume = [v for v in spec["volumes"] if v["name"] == "kvmount-ca"]
    assert volume == [{"name": "kvmount-ca", "configMap": {"name": "corp-roots", "items": [{"key": "roots.pem", "path": "ca.crt"}]}}], volume
    users = [c for c in spec.get("initContainers", []) + spec["containers"]
             if c["name"] in ("kvmount-agent", "kvmount-agent-init")
             or (c.get("command") or [""])[0] == "/kvmount/bin/kvmount-agent"]
    assert users, "no agent or exec command in the patched pod"
    for c in users:
        words = (c.get("command") or []) + (c.get("args") or [])
        if c["name"].startswith("kvmount-agent"):
            assert f"--ca-file={CA_FILE}" in words, (c["name"], words)
        else:  # exec: the flag goes before `--` and the app's own command
            assert f"--ca-file={CA_FILE}" in words[: words.index("--")], (c["name"], words)
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "kvmount-ca"]
        assert mounts == [{"name": "kvmount-ca", "mountPath": os.path.dirname(CA_FILE), "readOnly": True}], (c["name"], mounts)


def test_the_apiserver_rules_catch_what_the_schemas_miss():
    """Each rule above refuses a pod that kubernetes-validate accepts: the checks the patched
    pods pass are not vacuous."""
    def pod(**spec):
        base = {"containers": [{"name": "app", "image": "app:1"}]}
        base.update(spec)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base}

    mount = lambda path, name="v": {"name": name, "mountPath": path}
    bad = {
        "duplicate container names": pod(initContainers=[{"name": "app", "image": "a:1"}]),
        "two mounts at one path": pod(
            containers=[{"name": "app", "image": "app:1", "volumeMounts": [mount("/s"), mount("/s")]}],
            volumes=[{"name": "v", "emptyDir": {}}],
        ),
        "a mount of a missing volume": pod(containers=[{"name": "app", "image": "app:1", "volumeMounts": [mount("/s", "nope")]}]),
        "duplicate volume names": pod(volumes=[{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]),
        "a request above its limit": pod(
            containers=[{"name": "app", "image": "app:1", "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "32Mi"}}}]
        ),
    }
    for label, obj in bad.items():
        validate(obj, label)
        with pytest.raises(AssertionError):
            apiserver_rules(obj, label)
    assert quantity("0.05") == quantity("50m") and quantity("1Gi") > quantity("1G")
