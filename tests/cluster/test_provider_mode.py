"""Provider mode as users install it, with the real upstream Secrets Store CSI Driver: the driver
(v1.6.0 and v1.5.4) runs as a process on the node, registered with the kubelet by the test
registrar, with --enable-secret-rotation; kvmount is installed by its own chart
(deploy/helm/kvmount, mode provider) from its own images, serving the `azure` provider socket
in the driver's provider directory. A SecretProviderClass written for the Azure provider,
unchanged (provider: azure, workload identity: the kubelet's service-account token for
api://AzureADTokenExchange, exchanged at the mock vault, which trusts the cluster's issuer),
mounts in root and non-root pods; the driver's secretObjects sync and its rotation work with
kvmount as the provider; and the mock vault's request counts show kvmount's Key Vault reads
staying per node while the driver calls Mount per pod.

One driver and one chart install per driver version (the `provider` fixture, module scope);
the tests of a version run in file order and share them. A failing test prints the app and
release namespaces' pods, events and logs (kvmount's among them), the kubelet's log and the
driver's."""

import base64
import json
import os
import shutil
import stat
import sys
import tempfile
import time

import pytest

from conftest import WI_CLIENT_ID, WI_NAMESPACE, dump, start_upstream_driver, vault_call
from kvmount_stack import RELEASE, metric, metrics_of, stats_count, vault_stats, wait_for
import kvmount_stack as stack
METRICS_PORT = 9810  # provider.metricsPort (chart default)
# kvmount reads each object in use once per ROTATION_SECONDS (plus up to 10% jitter, and up to
# a tenth of the interval until the loop's next tick); the driver calls Mount for every pod
# every DRIVER_POLL_SECONDS at most (v1.5.4: its rotation reconciler; v1.6.0: on the kubelet's
# republish, which this cluster's kubelet does every 10 s, syncFrequency).
ROTATION_SECONDS = 10
DRIVER_POLL_SECONDS = 5
# provider.cacheIdle: entries the driver stops asking for are dropped after this. Longer than
# any gap between one pod's Mounts here, so an entry is never dropped and read again while a
# pod uses it: every Key Vault read the counting test sees is a first read or a rotation read.
CACHE_IDLE = "5m"
PODS_PER_NODE = 6
NON_ROOT = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}


def azure_class(name, objects, secret_objects=None):
    """A SecretProviderClass as the Azure provider's documentation writes one for workload
    identity (https://azure.github.io/secrets-store-csi-driver-provider-azure/docs/configurations/
    identity-access-modes/workload-identity-mode/): provider azure, usePodIdentity "false",
    clientID, keyvaultName, cloudName "", objects as a YAML array of YAML strings with
    objectVersion "", tenantId."""
    array = "".join(f'  - |\n    objectName: {o}\n    objectType: secret\n    objectVersion: ""\n' for o in objects)
    spec = {"provider": "azure",
            "parameters": {"usePodIdentity": "false", "clientID": WI_CLIENT_ID, "keyvaultName": "cluster",
                           "cloudName": "", "objects": "array:\n" + array, "tenantId": None}}
    if secret_objects:
        spec["secretObjects"] = secret_objects
    return {"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
            "metadata": {"name": name, "namespace": WI_NAMESPACE}, "spec": spec}


def app_pod(name, spc, security_context=None):
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": WI_NAMESPACE},
        "spec": {
            "serviceAccountName": "app", "terminationGracePeriodSeconds": 1,
            "securityContext": security_context or {},
            "containers": [{"name": "c", "image": "kvmount.test/busybox:1", "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", "sleep 3600"],
                            "volumeMounts": [{"name": "s", "mountPath": "/mnt/s", "readOnly": True}]}],
            "volumes": [{"name": "s", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                              "volumeAttributes": {"secretProviderClass": spc}}}],
        },
    }


class Provider:
    """What a version's tests share: the driver, the chart install, the mock vault."""

    def __init__(self, cluster, helm, mock_vault, driver, release_ns):
        self.cluster = cluster
        self.helm = helm
        self.vault = mock_vault
        self.driver = driver
        self.version = driver.version
        self.release_ns = release_ns
        self.timings = {}
        self.counts = {}
        self.pod_ip = None

    def kubectl(self, *args, **kw):
        return self.cluster.kubectl(*args, **kw)

    def apply_class(self, cls):
        cls["spec"]["parameters"]["tenantId"] = self.vault["tenant"]
        self.cluster.apply(cls)

    def node_pod(self):
        """The one running, ready kvmount DaemonSet pod."""
        def ready():
            items = json.loads(self.kubectl("get", "pods", "-n", self.release_ns, "-l",
                                            "app.kubernetes.io/component=node", "-o", "json"))["items"]
            ok = [p for p in items if p["status"].get("phase") == "Running"
                  and all(s.get("ready") for s in p["status"].get("containerStatuses", []))]
            return len(ok) == 1 == len(items), ok[0] if ok else [p["status"] for p in items]
        return wait_for("one ready kvmount node pod", ready, 90)

    def metrics(self):
        """kvmount's /metrics (its pod IP found once: the tests never restart it)."""
        self.pod_ip = self.pod_ip or self.node_pod()["status"]["podIP"]
        return metrics_of(self.cluster, self.pod_ip, METRICS_PORT)

    def put_secret(self, name, value):
        token = self.kubectl("create", "token", "app", "-n", WI_NAMESPACE, "--audience=api://AzureADTokenExchange").strip()
        got = vault_call(self.cluster, self.vault, token, "PUT", f"/secrets/{name}?api-version=7.4", json.dumps({"value": value}))
        assert got.get("status") == 200, got

    def cat(self, pod, name):
        return self.kubectl("exec", "-n", WI_NAMESPACE, pod, "--", "cat", f"/mnt/s/{name}", check=False)

    def delete_pods(self, *names):
        """Deletes the pods (all at once), waits until they are gone, and checks that the
        kubelet's targets are unmounted."""
        uids = [json.loads(self.kubectl("get", "pod", n, "-n", WI_NAMESPACE, "-o", "json"))["metadata"]["uid"]
                for n in names]
        self.kubectl("delete", "pod", "-n", WI_NAMESPACE, *names, "--wait=true", "--timeout=90s")
        with open("/proc/self/mountinfo") as f:
            left = [line for line in f if any(uid in line for uid in uids)]
        assert not left, left


@pytest.fixture(scope="module", params=["v1.6.0", "v1.5.4"])
def provider(request, cluster, cluster_env, helm, mock_vault, kvmount_images):
    version = request.param
    release_ns = "kvmount-provider-" + version.replace(".", "-")
    work = tempfile.mkdtemp(prefix="kvmount-provider-chart.")
    driver = None
    installed = False
    try:
        driver = start_upstream_driver(cluster, cluster_env, version,
                                       extra_args=["--enable-secret-rotation", f"--rotation-poll-interval={DRIVER_POLL_SECONDS}s"],
                                       token_audiences=["api://AzureADTokenExchange"])
        # The node DaemonSet mounts the driver's provider directory (hostPath).
        stack.create_namespaces(cluster, mock_vault, (release_ns,))
        cluster.kubectl("create", "namespace", WI_NAMESPACE)
        cluster.kubectl("create", "serviceaccount", "app", "-n", WI_NAMESPACE)
        # The Azure provider's socket, in the directory this driver reads (its --provider-volume).
        values = stack.provider_mode_values(cluster, mock_vault, kvmount_images, {
            "rotationInterval": f"{ROTATION_SECONDS}s", "cacheIdle": CACHE_IDLE,
            "socketName": "azure", "providersDir": driver.provider_dir})
        p = Provider(cluster, helm, mock_vault, driver, release_ns)
        t0 = time.monotonic()
        try:
            stack.install_chart(helm, values, work, namespace=release_ns)
            installed = True
            # helm's --wait may return before the DaemonSet has a pod at all.
            p.node_pod()
        except BaseException:
            dump(cluster, release_ns)
            raise
        p.timings["helm install --wait"] = time.monotonic() - t0
        yield p
        print(f"\nprovider mode {version} timings (s): { {k: round(v, 1) for k, v in p.timings.items()} }; "
              f"counts: {p.counts}", file=sys.stderr)
    finally:
        # Pods first, while the driver is there to unpublish their volumes; then kvmount, the
        # driver, and the app namespace, gone before the next version creates it again.
        cluster.kubectl("delete", "pods", "--all", "-n", WI_NAMESPACE, "--wait=true", "--timeout=90s", check=False)
        if installed:
            helm("uninstall", RELEASE, "-n", release_ns, "--wait", "--timeout=2m", check=False)
        if driver is not None:
            driver.stop()
        cluster.kubectl("delete", "namespace", WI_NAMESPACE, "--wait=true", "--timeout=90s", check=False)
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(autouse=True)
def dump_on_failure(request, cluster):
    """A failed test prints the app and release namespaces (pods, events, kvmount's log), the
    kubelet's log and the driver's."""
    t0 = time.monotonic()
    yield
    p = request.node.funcargs.get("provider")
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(cluster, WI_NAMESPACE, *([p.release_ns] if p else []))
    if p is not None:
        p.timings[request.node.originalname] = time.monotonic() - t0


def test_chart_serves_the_azure_provider_socket(provider):
    """The chart in provider mode: one DaemonSet pod, one container from kvmount's image, no
    service-account token (provider mode never calls the API server), Ready; kvmount's socket
    is `azure.sock` in the driver's provider directory, mode 0600."""
    pod = provider.node_pod()
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kvmount"], pod["spec"]["containers"]
    assert pod["spec"].get("automountServiceAccountToken") is False, pod["spec"]
    socket = os.path.join(provider.driver.provider_dir, "azure.sock")
    st = os.stat(socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert sorted(os.listdir(provider.driver.provider_dir)) == ["azure.sock"]


def rotating(provider):
    return "rot-" + provider.version.replace(".", "-")


def test_azure_class_mounts_unchanged_in_root_and_non_root_pods(provider, wait_pod):
    """A class written for the Azure provider (provider: azure; see azure_class) mounts through
    the driver and kvmount in a root pod and a non-root pod (runAsUser 1000, fsGroup 2000):
    both read both objects; the driver writes them root:root 0644 and records each mount in
    its SecretProviderClassPodStatus."""
    provider.put_secret(rotating(provider), f"{provider.version}-first")
    provider.apply_class(azure_class("azure-wi", ["db-password", rotating(provider)], secret_objects=[
        {"secretName": "synced", "type": "Opaque", "data": [{"objectName": rotating(provider), "key": "value"}]}]))
    provider.cluster.apply(app_pod("root", "azure-wi"))
    provider.cluster.apply(app_pod("nonroot", "azure-wi", NON_ROOT))
    for name in ("root", "nonroot"):
        wait_pod(WI_NAMESPACE, name, timeout=120)
    for name in ("root", "nonroot"):
        assert provider.cat(name, "db-password").stdout == "cluster-secret-1", provider.cat(name, "db-password")
        assert provider.cat(name, rotating(provider)).stdout == f"{provider.version}-first"
        seen = provider.kubectl("exec", "-n", WI_NAMESPACE, name, "--", "stat", "-L", "-c", "%u %g %a",
                                "/mnt/s/db-password").strip()
        assert seen == "0 0 644", (name, seen)
    assert provider.kubectl("exec", "-n", WI_NAMESPACE, "nonroot", "--", "id", "-u").strip() == "1000"
    statuses = json.loads(provider.kubectl("get", "secretproviderclasspodstatuses", "-n", WI_NAMESPACE, "-o", "json"))["items"]
    assert sorted((s["status"]["podName"], s["status"]["mounted"]) for s in statuses) == [
        ("nonroot", True), ("root", True)], statuses


def test_secret_objects_sync_and_driver_rotation_with_kvmount(provider):
    """The driver syncs the object into the Secret its secretObjects names; a new version in the
    vault reaches both pods' files and the synced Secret (kvmount reads it at its next rotation,
    the driver's next Mount gets it); deleting the pods unmounts everything."""
    ns = WI_NAMESPACE
    version = provider.version

    def synced():
        got = provider.kubectl("get", "secret", "synced", "-n", ns, "-o", "jsonpath={.data.value}", check=False).stdout
        return base64.b64decode(got).decode() if got else None

    wait_for("the synced Secret", lambda: (synced() == f"{version}-first", synced()), 30)
    t0 = time.monotonic()
    provider.put_secret(rotating(provider), f"{version}-second")
    for pod in ("root", "nonroot"):
        wait_for(f"{pod} reads the new version", lambda: (provider.cat(pod, rotating(provider)).stdout == f"{version}-second",
                                                          provider.cat(pod, rotating(provider)).stdout), 90, every=1)
    provider.timings["rotation reached both pods"] = time.monotonic() - t0
    wait_for("the synced Secret's new version", lambda: (synced() == f"{version}-second", synced()), 60, every=1)
    provider.delete_pods("root", "nonroot")


def test_vault_reads_stay_per_node_while_the_driver_mounts_per_pod(provider, wait_pod):
    """PODS_PER_NODE pods on the node use one class of two objects. The driver calls kvmount's
    Mount once per pod, then again per pod on its rotation; the mock vault sees each object read
    once for all of them, then once per kvmount rotation interval, not per pod or per Mount.
    Counted at the mock vault (GET /_mock/stats: requests by route, object and status) and in
    kvmount's metrics (Mounts, rotation reads, cache misses)."""
    cluster, vault = provider.cluster, provider.vault
    objects = [f"count-{provider.version.replace('.', '-')}-{x}" for x in "ab"]
    for o in objects:
        provider.put_secret(o, o + "-1")
    provider.apply_class(azure_class("per-node", objects))
    names = [f"count-{i}" for i in range(PODS_PER_NODE)]

    def counts(samples):
        return {k: metric(samples, n, **labels) for k, n, labels in (
            ("mounts", "kvmount_mounts_total", {"path": "provider", "outcome": "ok"}),
            ("rotation_reads", "kvmount_rotation_checks_total", {}),
            ("misses", "kvmount_cache_misses_total", {}))}

    def delta(after, before):
        return {k: int(after[k] - before[k]) for k in after}

    def vault_counts(stats):
        return {"reads": {o: stats_count(stats, "secret.get", "secret/" + o, 200) for o in objects},
                "all_reads": stats_count(stats, "secret.get", status=200),
                "challenges": stats_count(stats, "secret.get", status=401),
                "tokens": stats_count(stats, "token", status=200)}

    def reset():
        """Clears the vault's counts between two readings of kvmount's metrics."""
        first = counts(provider.metrics())
        vault_stats(cluster, vault, reset=True)
        return first, counts(provider.metrics())

    def read(since):
        """The vault's counts, read between two readings of kvmount's metrics, with kvmount's
        counts since `since`: each as the (fewest, most) it can be (a rotation read may land
        between a metrics reading and the vault's), and the vault's own."""
        first = counts(provider.metrics())
        stats = vault_stats(cluster, vault)
        last = counts(provider.metrics())
        return dict({k: (delta(first, since[1])[k], delta(last, since[0])[k]) for k in first}, **vault_counts(stats))

    def within(n, bounds):
        return bounds[0] <= n <= bounds[1]

    # 1. The first Mounts. Counted as soon as kvmount has served one Mount per pod (the kubelet
    # publishes volumes before it starts the containers), well within one rotation interval of
    # the first read.
    since = reset()
    t0 = time.monotonic()
    cluster.apply({"apiVersion": "v1", "kind": "List",
                   "items": [app_pod(n, "per-node", NON_ROOT if i % 2 else None) for i, n in enumerate(names)]})
    wait_for(f"kvmount served {PODS_PER_NODE} Mounts", lambda: (
        lambda d: (d["mounts"] >= PODS_PER_NODE, d))(delta(counts(provider.metrics()), since[0])), 120, every=0.2)
    first = dict(read(since), seconds=round(time.monotonic() - t0, 1))
    provider.counts["first mounts"] = first
    print(f"\n{provider.version}, {PODS_PER_NODE} pods mounted: {first}")
    # Each object once: the first Mount read it, every other Mount got it from the node cache,
    # and its rotation read is due one interval after that first read.
    assert first["reads"] == {o: 1 for o in objects}, first
    # Every other read was a rotation read (of the earlier tests' objects, which the driver's
    # mounts keep in use for provider.cacheIdle); kvmount's own count of reads agrees.
    assert within(first["all_reads"] - 2, first["rotation_reads"]), first
    assert within(first["all_reads"], first["misses"]), first
    # One token exchange per pod token: each pod's own service-account token is proved at Entra
    # ID before the cache serves it (the identity's clients are shared; the proofs are not).
    # Mounts beyond one per pod are the driver's rotation, which can land inside this first
    # second: v1.5.4's reconciler runs every DRIVER_POLL_SECONDS whatever the pods' age, and
    # requests each pod a token of its own (CI saw 12 Mounts and 12 exchanges for 6 pods). Such
    # a Mount costs at most one exchange, and a pod has at most two tokens this early (the
    # kubelet's and the driver's).
    extra = first["mounts"][1] - PODS_PER_NODE
    assert PODS_PER_NODE <= first["tokens"] <= PODS_PER_NODE + min(extra, PODS_PER_NODE), first
    if provider.version != "v1.5.4":
        assert first["tokens"] == PODS_PER_NODE, first
    for n in names:
        wait_pod(WI_NAMESPACE, n, timeout=180)
    for n in names:
        assert provider.cat(n, objects[1]).stdout == objects[1] + "-1"

    # 2. A window of three rotation intervals, every pod running.
    since = reset()
    t0 = time.monotonic()
    time.sleep(3 * ROTATION_SECONDS)
    w = read(since)
    window = time.monotonic() - t0
    w["seconds"] = round(window, 1)
    provider.counts["window"] = w
    print(f"{provider.version}, {window:.1f}s window: {w}")
    # The driver called Mount for the pods again (its rotation), at least once per pod...
    assert w["mounts"][0] >= PODS_PER_NODE, w
    # ... and none of those Mounts read Key Vault: every read in the window is one of kvmount's
    # rotation reads (one per object in use per interval, for the node).
    assert within(w["all_reads"], w["rotation_reads"]) and within(w["all_reads"], w["misses"]), w
    # Token exchanges follow the pods' tokens, not the Mounts: a Mount carrying a token kvmount
    # has proved costs none; a renewed token (the kubelet's for v1.6.0, v1.5.4's own token
    # requests: measured 0 and 6 in such windows) costs one, once. At most one per pod here.
    assert w["tokens"] <= PODS_PER_NODE, w
    # Per object: one read per interval. Successive reads of an object are ROTATION_SECONDS
    # apart plus up to 10% jitter plus up to one loop tick (a tenth), so within the window
    # there are at least floor(window / 1.2 intervals) of them and at most floor(window /
    # interval) + 1, whatever the number of pods (per pod it would be PODS_PER_NODE times that).
    low, high = int(window // (1.2 * ROTATION_SECONDS)), int(window // ROTATION_SECONDS) + 1
    assert all(low <= r <= high for r in w["reads"].values()), (low, high, w)
    provider.delete_pods(*names)
