"""Clients no one on the project wrote, against kvmount's real sockets:

- the Secrets Store CSI Driver's own provider client at v1.5.4 (grpc-go 1.56.3, :authority is
  the socket path) and v1.6.0 (grpc-go 1.79.3, :authority `localhost`), with the MountRequest
  built as each release's NodePublishVolume builds it (tests/interop/driver-v*/main.go);
- a CSI client with kubelet 1.34's grpc-go and CSI spec, dialled as kubelet dials
  (`localhost`) and by the plain socket path, which grpc-go 1.72 sends percent-encoded
  (`%2Ftmp%2F...%2Fcsi.sock`) (tests/interop/csi-client/main.go);
- Python grpcio with its default channel options on both sockets: for `unix:/tmp/x.sock` it
  sends `tmp%2Fx.sock` (the path without its first slash, percent-encoded).

Run (tests/run.sh does):
    interop_env=$(tests/interop/install.sh)
    while IFS== read -r k v; do export "$k=$v"; done <<<"$interop_env"
    KVMOUNT_MOCK_VAULT_CMD="target/debug/kvmount-provider mock-vault" pytest tests/python

The daemon is the first word of KVMOUNT_MOCK_VAULT_CMD. A client whose variable is not set
fails its tests (never skips them).
"""

import base64
import json
import os
import re
import shlex
import subprocess
import tempfile
import time

import pytest

from kvmount_support import Proc, scratch_dirs, stubs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TENANT = "00000000-0000-0000-0000-000000000001"
APP = "00000000-0000-0000-0000-00000000000a"
APP_SECRET = "app-password"
PROVIDER = "kvmount"  # the driver dials <socket dir>/<SecretProviderClass spec.provider>.sock
NODE_ID = "interop-node"
READY = re.compile(r"^kvmount mock vault ready (.*)$")
TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
BINARY = bytes([0, 1, 2, 0xFF, 0xFE, 10])

SEED = f"""
tenantId: {TENANT}
identities:
  - name: app
    clientId: {APP}
    clientSecret: {APP_SECRET}
    federated:
      - {{ issuer: https://oidc.kvmount.local, subject: "system:serviceaccount:default:app" }}
vaults:
  - name: interop
    secrets:
      - {{ name: db-password, versions: ["old-password", "current-password"] }}
      - {{ name: blob, versions: ["{base64.b64encode(BINARY).decode()}"] }}
"""

# SecretProviderClass spec.parameters, as in the Azure provider's documentation.
OBJECTS = """array:
  - |
    objectName: db-password
    objectType: secret
  - |
    objectName: blob
    objectType: secret
    objectEncoding: base64
    objectAlias: dir/blob
"""
EXPECTED = {"db-password": b"current-password", "dir/blob": BINARY}


def client_bin(var):
    path = os.environ.get(var)
    if not path:
        pytest.fail(f"{var} is not set: run tests/interop/install.sh and export the VAR=path lines it prints (tests/run.sh does)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{var}={path} is not an executable: rerun tests/interop/install.sh")
    return path


class Node:
    """The mock vault and the daemon with both sockets, in a private temp dir."""

    def __init__(self, tmp, shm):
        cmd = os.environ.get("KVMOUNT_MOCK_VAULT_CMD")
        if not cmd:
            pytest.fail("set KVMOUNT_MOCK_VAULT_CMD, e.g. 'target/debug/kvmount-provider mock-vault'")
        self.bin = shlex.split(cmd)[0]
        self.tmp = tmp
        seed = os.path.join(tmp, "seed.yaml")
        with open(seed, "w") as f:
            f.write(SEED)
        self.tls_dir = os.path.join(tmp, "tls")
        self.mock = Proc(shlex.split(cmd) + ["--seed", seed, "--listen", "127.0.0.1:0", "--tls-dir", self.tls_dir])
        fields = dict(kv.split("=", 1) for kv in self.mock.ready_line(READY).group(1).split())
        url, suffix = fields["url"], fields["dns-suffix"]
        port = url.rsplit(":", 1)[1]
        self.socket_dir = os.path.join(tmp, "providers")
        os.mkdir(self.socket_dir)
        self.provider_socket = os.path.join(self.socket_dir, PROVIDER + ".sock")
        self.csi_socket = os.path.join(tmp, "csi.sock")
        self.daemon = Proc([
            self.bin, "serve", "--provider-socket", self.provider_socket,
            "--csi-socket", self.csi_socket, "--node-id", NODE_ID, "--state-dir", shm,
            "--keyvault-dns-suffix", suffix, "--authority-host", url, "--ca-file", fields["ca"],
            "--resolve", f"*.{suffix}=127.0.0.1:{port}", "--log-level", "debug",
        ])
        deadline = time.time() + 30
        while not (os.path.exists(self.provider_socket) and os.path.exists(self.csi_socket)):
            assert self.daemon.proc.poll() is None, self.daemon.log()
            assert time.time() < deadline, "the daemon's sockets never appeared"
            time.sleep(0.05)

    def token(self):
        return subprocess.run(
            [self.bin, "mock-vault", "--tls-dir", self.tls_dir, "mint-token", "--namespace", "default", "--service-account", "app"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()

    def stop(self):
        self.daemon.stop()
        self.mock.stop()


@pytest.fixture(scope="module")
def node():
    with scratch_dirs("kvmount-interop-") as (tmp, shm):
        n = Node(tmp, shm)
        try:
            yield n
            log = n.daemon.log()
            assert "current-password" not in log and APP_SECRET not in log
        finally:
            n.stop()


def volume_context(node, tokens):
    """NodePublishVolume volume_context from kubelet 1.34 for the driver's inline volume:
    volumeAttributes, the pod info (podInfoOnMount) and, with tokenRequests, the tokens."""
    ctx = {
        "secretProviderClass": "app-secrets",
        "csi.storage.k8s.io/pod.name": "app-0",
        "csi.storage.k8s.io/pod.namespace": "default",
        "csi.storage.k8s.io/pod.uid": "11111111-2222-3333-4444-555555555555",
        "csi.storage.k8s.io/serviceAccount.name": "app",
        "csi.storage.k8s.io/ephemeral": "true",
    }
    if tokens:
        ctx[TOKENS] = tokens_json(node)
    return ctx


def tokens_json(node):
    # kubelet's map of audience -> TokenRequestStatus (csi_mounter.go podServiceAccountTokenAttrs).
    return json.dumps({"api://AzureADTokenExchange": {"token": node.token(), "expirationTimestamp": "2099-01-01T00:00:00Z"}})


def run_driver(node, version, params=None, context=None, secrets=None, rotation_versions=None, target=True):
    """Runs the driver client of `version`; returns (exit code, its JSON, stderr, target)."""
    binary = client_bin("KVMOUNT_DRIVER_CLIENT_V" + version.lstrip("v").replace(".", "_"))
    work = tempfile.mkdtemp(dir=node.tmp)
    argv = [binary, "--socket-dir", node.socket_dir, "--provider", PROVIDER, "--timeout", "20s"]

    def put(name, value):
        path = os.path.join(work, name)
        with open(path, "w") as f:
            json.dump(value, f)
        return path

    target_dir = None
    if target:
        # Where kubelet would ask for the volume (the driver mounts a tmpfs there first).
        target_dir = os.path.join(work, "pods", context["csi.storage.k8s.io/pod.uid"], "volumes", "kubernetes.io~csi", "secrets", "mount")
        os.makedirs(target_dir)
        argv += ["--target", target_dir, "--params-json", put("params.json", params), "--volume-context-json", put("context.json", context)]
        argv += ["--secrets-json", "none" if secrets is None else put("secrets.json", secrets)]
        if rotation_versions is not None:
            argv += ["--rotation-versions-json", put("versions.json", rotation_versions)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        pytest.fail(f"driver client {version}: no JSON on stdout (exit {p.returncode}); stderr: {p.stderr}")
    return p.returncode, out, p.stderr, target_dir


def assert_ok(rc, out, err, what):
    assert rc == 0, f"{what} failed: {err.strip()} ({out.get('error')})"


def files_of(out):
    return {path: base64.b64decode(f["contents"]) for path, f in out["files"].items()}


def check_mounted(out, target):
    assert files_of(out) == EXPECTED
    assert all(f["mode"] == 0o644 for f in out["files"].values()), out["files"]
    # Written by the driver's atomic writer: the pod sees symlinks into ..data.
    assert os.path.islink(os.path.join(target, "db-password"))
    assert set(out["object_versions"]) == {"secret/db-password", "secret/blob"}
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in out["object_versions"].values()), out["object_versions"]


def sp_params():
    return {"usePodIdentity": "false", "keyvaultName": "interop", "tenantId": TENANT, "objects": OBJECTS}


def wi_params():
    return {"clientID": APP, "keyvaultName": "interop", "tenantId": TENANT, "objects": OBJECTS}


def kvmount_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', f.read()).group(1)


DRIVERS = ["v1.5.4", "v1.6.0"]


@pytest.mark.parametrize("version", DRIVERS)
def test_driver_version(node, version):
    rc, out, err, _ = run_driver(node, version, target=False)
    assert_ok(rc, out, err, f"driver {version} Version")
    assert out["runtime_version"] == kvmount_version()


@pytest.mark.parametrize("version", DRIVERS)
def test_driver_service_principal(node, version):
    """A nodePublishSecretRef with the service principal; kubelet sends no tokens."""
    context = volume_context(node, tokens=False)
    rc, out, err, target = run_driver(node, version, sp_params(), context, {"clientid": APP, "clientsecret": APP_SECRET})
    attributes = json.loads(out["attributes"])
    assert attributes == {**sp_params(), **context}
    assert json.loads(out["secrets"]) == {"clientid": APP, "clientsecret": APP_SECRET}
    assert out["permission"] == "420"
    assert_ok(rc, out, err, f"driver {version} Mount (service principal)")
    check_mounted(out, target)


@pytest.mark.parametrize("version", DRIVERS)
def test_driver_workload_identity_without_secret_ref(node, version):
    """No nodePublishSecretRef: kubelet passes no secrets, the driver marshals the nil map."""
    context = volume_context(node, tokens=True)
    rc, out, err, target = run_driver(node, version, wi_params(), context, None)
    assert out["secrets"] == "null"
    assert json.loads(out["attributes"])[TOKENS] == context[TOKENS]
    assert_ok(rc, out, err, f"driver {version} Mount (workload identity, secrets null)")
    check_mounted(out, target)


def test_driver_v1_6_0_tokens_in_secrets(node):
    """Kubernetes 1.35+ with the chart's serviceAccountTokenInSecrets: kubelet passes the tokens
    as NodePublishVolume secrets, so `secrets` is a JSON object holding only the tokens, and
    v1.6.0 copies them into the attributes too."""
    context = volume_context(node, tokens=False)
    tokens = tokens_json(node)
    rc, out, err, target = run_driver(node, "v1.6.0", wi_params(), context, {TOKENS: tokens})
    assert json.loads(out["secrets"]) == {TOKENS: tokens}
    assert json.loads(out["attributes"])[TOKENS] == tokens
    assert_ok(rc, out, err, "driver v1.6.0 Mount (tokens in secrets)")
    check_mounted(out, target)


def test_driver_v1_5_4_rotation_reconcile(node):
    """v1.5.4's rotation reconciler: no volumeAttributes, secrets `{}` without a
    nodePublishSecretRef, and the pod status's object versions as current_object_version."""
    context = volume_context(node, tokens=True)
    rc, first, err, _ = run_driver(node, "v1.5.4", wi_params(), context, None)
    assert_ok(rc, first, err, "driver v1.5.4 Mount (workload identity)")
    rc, out, err, target = run_driver(node, "v1.5.4", wi_params(), context, None, rotation_versions=first["object_versions"])
    assert out["secrets"] == "{}"
    assert "secretProviderClass" not in json.loads(out["attributes"])
    assert_ok(rc, out, err, "driver v1.5.4 rotation Mount")
    check_mounted(out, target)
    assert out["object_versions"] == first["object_versions"]


EXPECTED_CSI = {
    "GetPluginInfo": {"name": "secrets.kvmount.io"},
    "Probe": {"ready": True},
    "GetPluginCapabilities": {},
    # VOLUME_MOUNT_GROUP: the kubelet then passes the pod's fsGroup (issue 19).
    "NodeGetCapabilities": {"capabilities": [{"rpc": {"type": "VOLUME_MOUNT_GROUP"}}]},
    "NodeGetInfo": {"nodeId": NODE_ID},
}


@pytest.mark.parametrize("dial", ["kubelet", "path"])
def test_csi_client(node, dial):
    p = subprocess.run([client_bin("KVMOUNT_CSI_CLIENT"), "--endpoint", node.csi_socket, "--dial", dial], capture_output=True, text=True, timeout=120)
    calls = json.loads(p.stdout) if p.stdout.strip() else {}
    assert p.returncode == 0, f"CSI client (--dial {dial}) failed: {p.stderr.strip()}"
    info = calls["GetPluginInfo"]["response"]
    assert info.pop("vendorVersion") == kvmount_version()
    assert {name: call["response"] for name, call in calls.items()} == EXPECTED_CSI


def test_grpcio_default_options_provider(node):
    import grpc

    pb, pb_grpc = stubs(node.tmp, "provider")
    with grpc.insecure_channel("unix:" + node.provider_socket) as channel:
        stub = pb_grpc.CSIDriverProviderStub(channel)
        version = stub.Version(pb.VersionRequest(version="v1alpha1"), timeout=20)
        assert (version.runtime_name, version.runtime_version) == ("kvmount", kvmount_version())
        attributes = {**sp_params(), **volume_context(node, tokens=False)}
        resp = stub.Mount(pb.MountRequest(
            attributes=json.dumps(attributes), secrets=json.dumps({"clientid": APP, "clientsecret": APP_SECRET}),
            target_path="/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/secrets/mount", permission="420",
        ), timeout=60)
    assert {f.path: bytes(f.contents) for f in resp.files} == EXPECTED
    assert {o.id for o in resp.object_version} == {"secret/db-password", "secret/blob"}


def test_grpcio_default_options_csi(node):
    import grpc

    pb, pb_grpc = stubs(node.tmp, "csi")
    with grpc.insecure_channel("unix:" + node.csi_socket) as channel:
        identity, csi_node = pb_grpc.IdentityStub(channel), pb_grpc.NodeStub(channel)
        info = identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=20)
        assert (info.name, info.vendor_version) == ("secrets.kvmount.io", kvmount_version())
        assert identity.Probe(pb.ProbeRequest(), timeout=20).ready.value is True
        assert list(identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=20).capabilities) == []
        capabilities = csi_node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=20).capabilities
        assert [c.rpc.type for c in capabilities] == [pb.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP]
        assert csi_node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=20).node_id == NODE_ID
