"""Fixtures of the real-cluster suite (tests/cluster/cluster.py starts and stops the cluster).

    cluster          the running cluster (session): kubectl(), apply(), import_image(), ns(),
                     kubeconfig, kubelet_root, run_dir, node_ip, sa_issuer, sa_public_key
    namespace        a fresh namespace per test, deleted after it
    wait_pod         wait_pod(ns, name, phase) -> the pod's JSON
    helm             helm(*args) against the cluster (tests/deploy/install-helm.sh's binary)
    mock_vault       kvmount's mock vault in the cluster's network namespace, trusting the
                     cluster's service-account issuer (workload identity); the binary is
                     target/debug/kvmount-provider, or KVMOUNT_PROVIDER_BIN
    kvmount_images   kvmount's images (deploy/images/build.sh) imported into containerd: their
                     names ({"provider": ..., "sidecar": ...})
    upstream_driver  upstream_driver("v1.6.0") runs the Secrets Store CSI Driver as a process on
                     the node, registered with the kubelet by the test registrar, for one test
                     (start_upstream_driver() for longer, e.g. a module's fixture)

The parts come from tests/cluster/install.sh: tests/run.sh exports its VAR=path lines; run
alone, this suite runs install.sh itself (cached per machine). On a failed test the kubelet's
log and the test namespace's pods (describe, logs) are printed.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import cluster as cl  # noqa: E402
import kvmount_stack as stack  # noqa: E402


# The namespaces whose service account `app` the mock vault's identity is federated with
# (test_chart.py's pods live in CHART_APP_NAMESPACE, the others' in WI_NAMESPACE).
WI_NAMESPACE = "kvmount-wi"
CHART_APP_NAMESPACE = "kvmount-chart-app"
WI_CLIENT_ID = "00000000-0000-0000-0000-0000000000c1"


@pytest.fixture(scope="session")
def cluster_env():
    return stack.install_env()


@pytest.fixture(scope="session")
def cluster(cluster_env):
    # SIGTERM (tests/run.sh's trap, a CI timeout) ends the session like Ctrl-C does, so this
    # fixture's teardown runs; tests/run.sh's trap also runs `cluster.py down` on the run dir.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    c = cl.Cluster.start(cluster_env, parent=os.environ.get("TMPDIR"))
    try:
        yield c
    finally:
        print(f"\ncluster: memory (RSS MiB) at the end: {c.memory_mib()}", file=sys.stderr)
        problems = c.stop()
        signal.signal(signal.SIGTERM, old)
        assert not problems, f"teardown left: {problems}"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def namespace(request, cluster):
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:5]
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=privileged")
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def dump(cluster, *namespaces):
    """What a failed test shows: each namespace's pods and events, each container's log, the
    kubelet's and containerd's logs."""
    out = []
    for namespace in namespaces:
        out += ["", f"===== pods in {namespace}", cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout,
                cluster.kubectl("describe", "pods", "-n", namespace, check=False).stdout,
                f"===== events in {namespace}",
                cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout]
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout.split()
        for pod in pods:
            out += [f"===== logs of {namespace}/{pod}",
                    cluster.kubectl("logs", "-n", namespace, pod, "--all-containers", "--tail=100", check=False).stdout]
    out += ["===== kubelet (last 150 lines)", cluster.log_of("kubelet", 150),
            "===== containerd (last 40 lines)", cluster.log_of("containerd", 40)]
    # Processes tests started on the node (drivers, registrars, kvmount): their logs too.
    core = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "containerd"}
    for name in sorted(cluster.procs):
        if name not in core:
            out += [f"===== {name} (last 60 lines)", cluster.log_of(name, 60)]
    print("\n".join(out), file=sys.stderr)


@pytest.fixture
def wait_pod(cluster):
    def wait(namespace, name, phase="Running", timeout=90):
        deadline = time.monotonic() + timeout
        pod = {}
        while time.monotonic() < deadline:
            pod = json.loads(cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json"))
            got = pod.get("status", {}).get("phase")
            if got == phase and (phase != "Running" or all(
                    s.get("ready") for s in pod["status"].get("containerStatuses", []))):
                return pod
            if got in ("Failed", "Succeeded") and got != phase:
                break
            time.sleep(0.3)
        pytest.fail(f"pod {namespace}/{name} is not {phase} after {timeout}s: "
                    f"{json.dumps(pod.get('status', {}), indent=1)[-3000:]}")

    return wait


@pytest.fixture(scope="session")
def helm(cluster):
    """helm(*args, check=True) -> stdout, against the cluster (helm runs in its network namespace)."""
    run = stack.Helm(cluster)

    def helm(*args, check=True):
        try:
            return run(*args, check=check)
        except stack.StackError as e:
            pytest.fail(str(e))

    return helm


@pytest.fixture(scope="session")
def mock_vault(cluster, tmp_path_factory):
    """kvmount's mock vault on port 8443 of every address of the cluster's network namespace
    (hostNetwork pods reach it at 127.0.0.1:8443, every pod at the node IP through the CNI
    bridge's gateway; its certificate covers the node IP too), trusting the cluster's
    service-account issuer: a pod's projected token is a valid federated client assertion for
    identity `cluster-app` (client id WI_CLIENT_ID; subjects system:serviceaccount:default:app,
    system:serviceaccount:WI_NAMESPACE:app and system:serviceaccount:CHART_APP_NAMESPACE:app),
    which may read and write the secrets of vault `cluster`. Returns the ready line's fields
    (url, ca, tenant, ...) plus `tls_dir` and `port` (kvmount_stack.start_mock_vault)."""
    try:
        stack.provider_binary()
    except stack.NotBuilt as e:
        pytest.skip(str(e))
    seed = f"""tenantId: 00000000-0000-0000-0000-000000000001
issuers:
  - {{ issuer: "{cluster.sa_issuer}", publicKeyFile: "{cluster.sa_public_key}" }}
identities:
  - name: cluster-app
    clientId: {WI_CLIENT_ID}
    federated:
      - {{ issuer: "{cluster.sa_issuer}", subject: "system:serviceaccount:default:app" }}
      - {{ issuer: "{cluster.sa_issuer}", subject: "system:serviceaccount:{WI_NAMESPACE}:app" }}
      - {{ issuer: "{cluster.sa_issuer}", subject: "system:serviceaccount:{CHART_APP_NAMESPACE}:app" }}
vaults:
  - name: cluster
    access:
      - {{ identity: cluster-app, objects: ["secret/*"], permissions: [get, list, set] }}
    secrets:
      - {{ name: db-password, versions: ["cluster-secret-1"] }}
"""
    proc, fields = stack.start_mock_vault(cluster, str(tmp_path_factory.mktemp("mock-vault")), seed)
    yield fields
    proc.stop()


@pytest.fixture(scope="session")
def kvmount_images(cluster):
    """kvmount's two images imported into containerd (kvmount_stack.import_images: from
    KVMOUNT_IMAGE_DIR, KVMOUNT_IMAGE_ARCHIVES, or built now), as
    {"provider": "<registry>/<repo>/kvmount-provider:<tag>", "sidecar": ..., "archives": [...]}.
    KVMOUNT_IMAGES=skip (as in tests/deploy) skips what needs them."""
    if os.environ.get("KVMOUNT_IMAGES") == "skip":
        pytest.skip("KVMOUNT_IMAGES=skip")
    try:
        t0 = time.monotonic()
        images = stack.import_images(cluster)
        print(f"\nkvmount images ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        return images
    except stack.NotBuilt as e:
        pytest.skip(str(e))


def stop_process(p, grace=10):
    """SIGTERM, then SIGKILL after `grace` seconds: how every process a test started on the node
    is stopped."""
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


class UpstreamDriver:
    """The Secrets Store CSI Driver running as a process on the node (in the cluster's network
    namespace, the host's mount namespace), with its own service account's token, registered
    with the kubelet by the test registrar."""

    NAME = "secrets-store.csi.k8s.io"

    def __init__(self, cluster, env, version, workdir):
        self.cluster = cluster
        self.version = version
        self.dir = env[f"KVMOUNT_CLUSTER_DRIVER_V{version[1:].replace('.', '_')}"]
        self.registrar_bin = os.path.join(env["KVMOUNT_CLUSTER_REGISTRAR"], "registrar")
        self.workdir = workdir
        self.provider_dir = os.path.join(workdir, "providers")  # --provider-volume
        self.socket = os.path.join(cluster.kubelet_root, "plugins", "csi-secrets-store", "csi.sock")
        self.reg_socket = os.path.join(cluster.kubelet_root, "plugins_registry", self.NAME + "-reg.sock")
        self.driver = self.registrar = None

    def install_manifests(self, token_audiences=()):
        """Its CRDs, CSIDriver object and RBAC, from the module zip's deploy/ (not its DaemonSet).
        `token_audiences`: the CSIDriver's tokenRequests (the pod's service-account tokens the
        kubelet sends at publish), as the upstream chart's `tokenRequests` value sets them."""
        deploy = os.path.join(self.dir, "deploy")
        self.cluster.kubectl("delete", "csidriver", self.NAME, "--ignore-not-found")
        # Every rbac-*.yaml of the version: v1.5.4's rotation reconciler requests the pods'
        # tokens itself (rbac-secretprovidertokenrequest.yaml, rbac-secretproviderrotation.yaml);
        # v1.6.0 rotates on the kubelet's republish and ships neither.
        rbac = sorted(f for f in os.listdir(deploy) if f.startswith("rbac-") and f.endswith(".yaml"))
        for f in ["secrets-store.csi.x-k8s.io_secretproviderclasses.yaml",
                  "secrets-store.csi.x-k8s.io_secretproviderclasspodstatuses.yaml", "csidriver.yaml", *rbac]:
            self.cluster.kubectl("apply", "-f", os.path.join(deploy, f))
        if token_audiences:
            self.cluster.kubectl("patch", "csidriver", self.NAME, "--type=merge", "-p", json.dumps(
                {"spec": {"tokenRequests": [{"audience": a} for a in token_audiences]}}))
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                             "crd/secretproviderclasses.secrets-store.csi.x-k8s.io",
                             "crd/secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io")

    def _kubeconfig(self):
        """A kubeconfig with a token of the driver's own service account (its RBAC, not admin)."""
        token = self.cluster.kubectl("create", "token", "secrets-store-csi-driver", "-n", "kube-system",
                                     "--duration=2h").strip()
        path = os.path.join(self.workdir, "driver.kubeconfig")
        with open(path, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{certificate-authority: {self.cluster.ca_cert}, server: "https://{self.cluster.node_ip}:443"}}
users:
- name: u
  user: {{token: "{token}"}}
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
""")
        os.chmod(path, 0o600)
        return path

    def start(self, extra_args=()):
        os.makedirs(self.provider_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.socket), exist_ok=True)
        os.makedirs(os.path.dirname(self.reg_socket), exist_ok=True)
        env = dict(os.environ, KUBECONFIG=self._kubeconfig())
        self.driver = self.cluster.spawn(f"driver-{self.version}", [
            os.path.join(self.dir, "secrets-store-csi-driver"),
            f"--endpoint=unix://{self.socket}", f"--nodeid={self.cluster.node_name}",
            f"--provider-volume={self.provider_dir}", f"--additional-provider-volume-paths={self.provider_dir}",
            "--metrics-addr=127.0.0.1:8095", *extra_args], env=env)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket):
            if self.driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the driver did not serve {self.socket}:\n{self.cluster.log_of(f'driver-{self.version}', 40)}")
            time.sleep(0.2)
        self.registrar = self.cluster.spawn(f"registrar-{self.version}", [
            self.registrar_bin, f"--socket={self.reg_socket}", f"--name={self.NAME}", f"--endpoint={self.socket}"])
        return self

    def stop(self):
        for p in (self.registrar, self.driver):
            stop_process(p)


def start_upstream_driver(cluster, cluster_env, version, extra_args=(), token_audiences=()):
    """The driver `version` installed (its manifests) and started; the caller stops it."""
    if f"KVMOUNT_CLUSTER_DRIVER_V{version[1:].replace('.', '_')}" not in cluster_env:
        pytest.skip(f"the driver {version} is not built (tests/cluster/install.sh drivers)")
    # In the run dir: the provider socket's path must stay under 108 bytes.
    d = UpstreamDriver(cluster, cluster_env, version, os.path.join(cluster.run_dir, "d-" + version))
    os.makedirs(d.workdir, exist_ok=True)
    try:
        d.install_manifests(token_audiences)
        return d.start(extra_args)
    except BaseException:
        d.stop()
        raise


@pytest.fixture
def upstream_driver(cluster, cluster_env):
    started = []

    def start(version, extra_args=(), token_audiences=()):
        d = start_upstream_driver(cluster, cluster_env, version, extra_args, token_audiences)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


# Run inside the cluster's network namespace by vault_call(): a token exchange at the mock vault
# with a client assertion, then one Key Vault call with the access token; prints JSON.
VAULT_CLIENT = r"""
import http.client, json, ssl, sys, urllib.parse
port, ca, tenant, client_id, assertion, method, path, body = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=20)
form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
    "scope": "https://vault.localhost/.default", "client_assertion": assertion,
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
c.request("POST", f"/{tenant}/oauth2/v2.0/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); token = json.loads(r.read())
out = {"token_status": r.status, "token": token}
if r.status == 200:
    c.request(method, path, body or None, {"Authorization": "Bearer " + token["access_token"], "Content-Type": "application/json"})
    r = c.getresponse(); out["status"] = r.status; out["body"] = json.loads(r.read() or b"null")
print(json.dumps(out))
"""


def vault_call(cluster, mock_vault, assertion, method, path, body="", client_id=WI_CLIENT_ID):
    """Exchanges `assertion` (a service-account token) at the mock vault's token endpoint, then
    makes one Key Vault call (e.g. "PUT", "/secrets/x?api-version=7.4", json) from inside the
    cluster's network namespace; returns {"token_status", "token", "status", "body"}."""
    port = mock_vault["port"]
    out = subprocess.run(cluster.ns([sys.executable, "-c", VAULT_CLIENT, port, mock_vault["ca"], mock_vault["tenant"],
                                     client_id, assertion, method, path, body]),
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)
