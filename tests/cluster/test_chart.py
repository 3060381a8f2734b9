"""kvmount as users install it: the project's Helm chart (deploy/helm/kvmount) from kvmount's own
images (deploy/images/build.sh), on the real kubelet and apiserver. Standalone mode, kvmount
registering itself with the kubelet (one container per node), the sidecar injector with the
chart's own TLS (webhook.tls.mode=helm, no cert-manager), the chart's RBAC and service
accounts. The daemon and the injected agents reach the mock vault at the node IP (pods reach it
through the CNI bridge's gateway) and trust its CA through the chart's CA ConfigMap values.

One install for the module (the `chart` fixture); the tests run in file order and the last one
uninstalls. Each check is its own test; a failing one prints the app and release namespaces'
pods, events and logs (kvmount's among them) and the kubelet's log."""

import json
import os
import re
import shutil
import sys
import tempfile
import time

import pytest

from conftest import CHART_APP_NAMESPACE, WI_CLIENT_ID, dump, vault_call
from kvmount_stack import CA_CONFIGMAP, CHART_DIR, DRIVER, RELEASE, RELEASE_NS, split_image, wait_for
import kvmount_stack as stack

APP_NS = CHART_APP_NAMESPACE
ROTATION_SECONDS = 5  # provider.rotationInterval
METRICS_PORT = 9810  # provider.metricsPort (chart default)
BUSYBOX = {"image": "kvmount.test/busybox:1", "imagePullPolicy": "Never"}
NON_ROOT = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}
UPGRADE_TAG_SUFFIX = "-upgrade"


class Chart:
    """What the tests share: the install's output and timings, the images, the mock vault."""

    def __init__(self, cluster, helm, mock_vault, images, state_dir, values_file):
        self.cluster = cluster
        self.helm = helm
        self.vault = mock_vault
        self.images = images
        self.state_dir = state_dir
        self.values_file = values_file
        self.notes = ""
        self.installed = False
        self.timings = {}

    # --- kubectl shorthands ---

    def kubectl(self, *args, **kw):
        return self.cluster.kubectl(*args, **kw)

    def pod_json(self, name, ns=APP_NS):
        return json.loads(self.kubectl("get", "pod", name, "-n", ns, "-o", "json"))

    def node_pods(self):
        """The DaemonSet's pods (JSON), oldest first."""
        items = json.loads(self.kubectl("get", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/component=node",
                                        "-o", "json"))["items"]
        return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])

    def node_pod(self):
        """The one running, ready DaemonSet pod (waits for it)."""
        def ready():
            pods = [p for p in self.node_pods() if not p["metadata"].get("deletionTimestamp")]
            ok = [p for p in pods if p["status"].get("phase") == "Running"
                  and all(s.get("ready") for s in p["status"].get("containerStatuses", []))]
            return (len(ok) == 1 and len(pods) == 1), (ok[0] if ok else [p["status"] for p in pods])
        return wait_for("one ready kvmount node pod", ready, 90)

    def cat(self, pod, path, ns=APP_NS):
        return self.kubectl("exec", "-n", ns, pod, "--", "cat", path, check=False)

    def metrics(self):
        """The node daemon's /metrics: {name: value} of unlabelled samples."""
        samples = stack.metrics_of(self.cluster, self.node_pod()["status"]["podIP"], METRICS_PORT)
        return {name: value for name, labels, value in samples if not labels}

    def node_log(self, pod_name):
        return self.kubectl("logs", "-n", RELEASE_NS, pod_name, check=False).stdout

    def put_secret(self, name, value):
        token = self.kubectl("create", "token", "app", "-n", APP_NS, "--audience=api://AzureADTokenExchange").strip()
        got = vault_call(self.cluster, self.vault, token, "PUT", f"/secrets/{name}?api-version=7.4", json.dumps({"value": value}))
        assert got.get("status") == 200, got

    def inline_attrs(self, objects=("db-password",)):
        return {"keyvaultName": "cluster", "tenantID": self.vault["tenant"], "clientID": WI_CLIENT_ID,
                "objects": "array:\n" + "".join(f"  - |\n    objectName: {o}\n    objectType: secret\n" for o in objects)}


def csi_pod(name, attrs, security_context=None, command="sleep 3600"):
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": APP_NS},
        "spec": {"serviceAccountName": "app", "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                 "securityContext": security_context or {},
                 "containers": [{"name": "c", **BUSYBOX, "command": ["/bin/sh", "-c", command],
                                 "volumeMounts": [{"name": "s", "mountPath": "/mnt/s", "readOnly": True}]}],
                 "volumes": [{"name": "s", "csi": {"driver": DRIVER, "readOnly": True, "volumeAttributes": attrs}}]},
    }


def mountinfo_lines(needle):
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if needle in line]


def csi_mounts(cluster):
    """Mounts of CSI volumes under the kubelet's pods directory (any driver)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f
                if line.split()[4].startswith(os.path.join(cluster.kubelet_root, "pods") + "/")
                and "/volumes/kubernetes.io~csi/" in line.split()[4]]


def delete_pods(chart, *names, ns=APP_NS):
    """Deletes pods (all at once) and waits until they are gone; returns their UIDs."""
    uids = []
    for n in names:
        got = chart.kubectl("get", "pod", n, "-n", ns, "-o", "jsonpath={.metadata.uid}", check=False)
        if got.returncode == 0:
            uids.append(got.stdout)
    if names:
        chart.kubectl("delete", "pod", "-n", ns, *names, "--ignore-not-found", "--wait=true", "--timeout=90s")
    return uids


def csi_pod_names(chart):
    """The app namespace's pods that have a kvmount CSI volume."""
    items = json.loads(chart.kubectl("get", "pods", "-n", APP_NS, "-o", "json"))["items"]
    return [p["metadata"]["name"] for p in items
            if any((v.get("csi") or {}).get("driver") == DRIVER for v in p["spec"].get("volumes") or [])]


def state_records(chart):
    """The daemon's state files (one per published volume) in the host's state dir."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(chart.state_dir) for f in files)


@pytest.fixture(scope="module")
def chart(cluster, helm, mock_vault, kvmount_images):
    # The state dir: tmpfs on the host, as the chart asks (stateHostDir); removed at the end.
    state_dir = tempfile.mkdtemp(dir="/dev/shm", prefix="kvmount-chart-state.")
    work = tempfile.mkdtemp(prefix="kvmount-chart.")
    values = stack.chart_values(cluster, mock_vault, kvmount_images, state_dir,
                                provider={"rotationInterval": f"{ROTATION_SECONDS}s"})
    c = Chart(cluster, helm, mock_vault, kvmount_images, state_dir, None)
    try:
        stack.create_namespaces(cluster, mock_vault, (RELEASE_NS, APP_NS))
        cluster.kubectl("create", "serviceaccount", "app", "-n", APP_NS)
        t0 = time.monotonic()
        try:
            c.notes, c.values_file = stack.install_chart(helm, values, work)
        except BaseException:
            dump(cluster, RELEASE_NS)
            raise
        c.installed = True
        c.timings["helm install --wait"] = time.monotonic() - t0
        yield c
    finally:
        # Pods first, while the driver is there to unpublish their volumes; then the release.
        cluster.kubectl("delete", "pods,jobs", "--all", "-n", APP_NS, "--wait=true", "--timeout=90s", check=False)
        if c.installed:
            helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout=2m", check=False)
        # Their pods are gone; the namespaces' own deletion need not be waited for.
        cluster.kubectl("delete", "namespace", APP_NS, RELEASE_NS, "--wait=false", check=False)
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        print(f"\nchart timings (s): { {k: round(v, 1) for k, v in c.timings.items()} }", file=sys.stderr)


@pytest.fixture(autouse=True)
def dump_on_failure(request, cluster):
    """A failed test prints the app and release namespaces (pods, events, kvmount's logs) and
    the kubelet's log."""
    t0 = time.monotonic()
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(cluster, APP_NS, RELEASE_NS)
    chart = request.node.funcargs.get("chart")
    if chart is not None:
        chart.timings[request.node.name] = time.monotonic() - t0


# ------------------------------------------------------------------------------------------
# 1. The install


def test_chart_installs_and_kvmount_registers_itself(chart):
    """helm install prints the NOTES; one DaemonSet pod, one container (no registrar or
    livenessprobe), Ready; the kubelet lists the driver in the node's CSINode; the node pod
    runs under the chart's service account, not an admin identity, and found its memory limit
    (the tmpfs budget)."""
    assert "kubectl get csinode" in chart.notes, chart.notes
    assert f"kubectl get csidriver {DRIVER}" in chart.notes, chart.notes
    pod = chart.node_pod()
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kvmount"], pod["spec"]["containers"]
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-node"
    assert pod["spec"]["containers"][0]["image"] == chart.images["provider"]
    # The daemon found its container's memory limit (the chart's 128Mi) and keeps the volumes'
    # files within it, less its own headroom (48 MiB): --tmpfs-budget auto inside a pod.
    log = chart.node_log(pod["metadata"]["name"])
    budget = re.search(r"budget=(\d+)", log)
    assert budget and int(budget.group(1)) == (128 - 48) << 20, log[-3000:]

    t0 = time.monotonic()
    drivers = stack.wait_csinode_lists(chart.cluster, DRIVER, 30)
    assert DRIVER in drivers, f"the CSINode lists {drivers}"
    chart.timings["CSINode lists the driver (after the pod is ready)"] = time.monotonic() - t0
    # The registration socket is kvmount's own, in the kubelet's plugins_registry.
    assert os.path.exists(os.path.join(chart.cluster.kubelet_root, "plugins_registry", f"{DRIVER}-reg.sock"))
    # The webhook is up behind its Service, with the chart's CA in the webhook configuration.
    mwc = json.loads(chart.kubectl("get", "mutatingwebhookconfiguration", f"{RELEASE}-webhook", "-o", "json"))
    client = mwc["webhooks"][0]["clientConfig"]
    assert client["service"]["name"] == f"{RELEASE}-webhook" and client.get("caBundle"), client
    endpoints = chart.kubectl("get", "endpoints", f"{RELEASE}-webhook", "-n", RELEASE_NS,
                              "-o", "jsonpath={.subsets[*].addresses[*].ip}")
    assert endpoints.strip(), "the webhook Service has no ready endpoint"


# ------------------------------------------------------------------------------------------
# 2.-4. Pods read their files


def test_root_and_non_root_pods_read_their_files_with_owner_and_modes(chart, wait_pod):
    """The kubelet passes the pod's fsGroup as volume_mount_group (kvmount advertises
    VOLUME_MOUNT_GROUP): the non-root pod's tmpfs and files belong to group 2000; the root
    pod's to group 0. The tmpfs is 0750 root:<group>, files 0644 root:<group>."""
    attrs = chart.inline_attrs()
    chart.cluster.apply(csi_pod("root", attrs))
    chart.cluster.apply(csi_pod("nonroot", attrs, NON_ROOT))
    for name in ("root", "nonroot"):
        wait_pod(APP_NS, name, timeout=120)
    for name, group in (("root", "0"), ("nonroot", "2000")):
        got = chart.cat(name, "/mnt/s/db-password")
        assert got.returncode == 0 and got.stdout == "cluster-secret-1", (name, got.stderr)
        seen = chart.kubectl("exec", "-n", APP_NS, name, "--", "stat", "-L", "-c", "%u %g %a %n",
                             "/mnt/s", "/mnt/s/db-password").splitlines()
        assert seen == [f"0 {group} 750 /mnt/s", f"0 {group} 644 /mnt/s/db-password"], (name, seen)
    assert chart.kubectl("exec", "-n", APP_NS, "nonroot", "--", "id", "-u").strip() == "1000"
    # tmpfs with the kubelet's target path, mounted nosuid,nodev,noexec
    uid = chart.pod_json("nonroot")["metadata"]["uid"]
    mounts = [line for line in mountinfo_lines(uid) if "kubernetes.io~csi/s/mount" in line]
    assert len(mounts) == 1 and " - tmpfs " in mounts[0], mounts
    assert all(o in mounts[0].split()[5].split(",") for o in ("nosuid", "nodev", "noexec")), mounts


def test_secret_provider_class_resolves_through_the_chart_rbac(chart, wait_pod):
    """A volume naming a SecretProviderClass (the chart installed its CRD): the node daemon
    GETs it with its own service account, which the chart's ClusterRole allows (and nothing
    more: no Secrets)."""
    sa = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}-node"
    can = lambda *a: chart.kubectl("auth", "can-i", *a, f"--as={sa}", check=False).stdout.strip()  # noqa: E731
    assert can("get", "secretproviderclasses.secrets-store.csi.x-k8s.io", "-n", APP_NS) == "yes"
    assert can("list", "secrets", "-n", APP_NS) == "no"
    assert can("get", "secrets", "-n", APP_NS) == "no"
    chart.cluster.apply({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": {"name": "named", "namespace": APP_NS},
        "spec": {"provider": "kvmount", "parameters": chart.inline_attrs()},
    })
    chart.cluster.apply(csi_pod("by-class", {"secretProviderClass": "named"}, NON_ROOT))
    wait_pod(APP_NS, "by-class", timeout=120)
    got = chart.cat("by-class", "/mnt/s/db-password")
    assert got.returncode == 0 and got.stdout == "cluster-secret-1", got.stderr


def test_rotation_in_the_vault_reaches_running_pods_within_one_interval(chart, wait_pod):
    """A new version written to the vault is in the pods' files within one rotation interval
    (provider.rotationInterval 5s; the daemon adds up to 10% jitter)."""
    chart.put_secret("chart-rotating", "rotation-1")
    attrs = chart.inline_attrs(("db-password", "chart-rotating"))
    chart.cluster.apply(csi_pod("rot-a", attrs))
    chart.cluster.apply(csi_pod("rot-b", attrs, NON_ROOT))
    for name in ("rot-a", "rot-b"):
        wait_pod(APP_NS, name, timeout=120)
        assert chart.cat(name, "/mnt/s/chart-rotating").stdout == "rotation-1"
    t0 = time.monotonic()
    chart.put_secret("chart-rotating", "rotation-2")
    for name in ("rot-a", "rot-b"):
        wait_for(f"{name} reads the new version",
                 lambda: (chart.cat(name, "/mnt/s/chart-rotating").stdout == "rotation-2",
                          chart.cat(name, "/mnt/s/chart-rotating").stdout), 60, every=0.2)
    took = time.monotonic() - t0
    chart.timings["rotation reached both pods"] = took
    # One interval plus its jitter, plus the time the reads through kubectl exec take here.
    assert took <= ROTATION_SECONDS * 1.1 + 3, f"the new version took {took:.1f}s"


# ------------------------------------------------------------------------------------------
# 5.-7. Deletion, the daemon's own restart, refusals


def test_deleting_the_pods_unmounts_every_tmpfs_and_empties_the_cache(chart, wait_pod):
    """Every pod with a kvmount volume goes (those of the tests above and one of this test's
    own): no mount of their UIDs is left on the node, the state dir holds no record, and the
    node cache is empty (the daemon's metrics)."""
    chart.cluster.apply(csi_pod("to-delete", chart.inline_attrs()))
    wait_pod(APP_NS, "to-delete", timeout=120)
    before = chart.metrics()
    assert before.get("kvmount_cached_objects", 0) >= 1, before
    assert state_records(chart), "no state record while volumes are published"
    names = csi_pod_names(chart)
    uids = delete_pods(chart, *names)
    assert len(uids) == len(names) >= 1
    for uid in uids:
        assert not mountinfo_lines(uid), mountinfo_lines(uid)
        # kvmount removed the target (the kubelet removes the pod's directory later, itself)
        assert not os.path.exists(os.path.join(chart.cluster.kubelet_root, "pods", uid, "volumes", "kubernetes.io~csi",
                                               "s", "mount"))
    assert not csi_mounts(chart.cluster), csi_mounts(chart.cluster)
    assert not state_records(chart), state_records(chart)
    wait_for("kvmount_cached_objects 0", lambda: (chart.metrics().get("kvmount_cached_objects") == 0,
                                                  chart.metrics().get("kvmount_cached_objects")), 10)


def test_node_pod_deleted_while_app_pods_run_re_adopts_and_later_cleans_up(chart, wait_pod):
    """The DaemonSet pod goes while two app pods run: they keep reading (their tmpfs stays on
    the node); the new pod re-adopts both volumes from the state dir (its log says adopted=2)
    and unpublishes them when the pods go."""
    assert not csi_pod_names(chart), "pods of an earlier test are still there"
    attrs = chart.inline_attrs()
    chart.cluster.apply(csi_pod("keep-a", attrs))
    chart.cluster.apply(csi_pod("keep-b", attrs, NON_ROOT))
    pods = {n: wait_pod(APP_NS, n, timeout=120) for n in ("keep-a", "keep-b")}
    old = chart.node_pod()["metadata"]["name"]
    chart.kubectl("delete", "pod", old, "-n", RELEASE_NS, "--wait=true", "--timeout=60s")
    # No daemon now (the DaemonSet controller makes a new pod soon): the pods still read.
    for name in pods:
        got = chart.cat(name, "/mnt/s/db-password")
        assert got.returncode == 0 and got.stdout == "cluster-secret-1", (name, got.stderr)
    new = chart.node_pod()["metadata"]["name"]
    assert new != old
    log = chart.node_log(new)
    adopted = re.search(r"adopted=(\d+)", log)
    assert adopted and int(adopted.group(1)) == 2, log[-3000:]
    for name in pods:
        assert chart.cat(name, "/mnt/s/db-password").stdout == "cluster-secret-1"
    uids = delete_pods(chart, *pods)
    for uid in uids:
        assert not mountinfo_lines(uid), mountinfo_lines(uid)
    assert not state_records(chart), state_records(chart)
    wait_for("kvmount_cached_objects 0 in the new daemon",
             lambda: (chart.metrics().get("kvmount_cached_objects") == 0, chart.metrics()), 15)


def test_refused_volume_shows_a_failed_mount_event_naming_the_field(chart):
    """An inline objects entry with an invalid objectType: the kubelet's FailedMount event
    carries kvmount's INVALID_ARGUMENT message, which names the field."""
    attrs = dict(chart.inline_attrs(), objects="array:\n  - |\n    objectName: db-password\n    objectType: bogus\n")
    chart.cluster.apply(csi_pod("refused", attrs))

    def event():
        items = json.loads(chart.kubectl("get", "events", "-n", APP_NS, "--field-selector",
                                         "involvedObject.name=refused,reason=FailedMount", "-o", "json"))["items"]
        return bool(items), [e["message"] for e in items]

    messages = wait_for("a FailedMount event for pod refused", event, 60)
    assert any("objectType" in m and "InvalidArgument" in m for m in messages), messages
    assert chart.pod_json("refused")["status"]["phase"] == "Pending"
    delete_pods(chart, "refused")


# ------------------------------------------------------------------------------------------
# 8. The webhook


def injected(name, mode, extra_annotations=None, security_context=None, command="sleep 3600", kind="Pod"):
    annotations = {"kvmount.io/inject": "true", "kvmount.io/mode": mode, "kvmount.io/keyvault": "cluster",
                   "kvmount.io/client-id": WI_CLIENT_ID, **(extra_annotations or {})}
    spec = {"serviceAccountName": "app", "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
            "securityContext": security_context or {},
            "containers": [{"name": "app", **BUSYBOX, "command": ["/bin/sh", "-c", command]}]}
    if kind == "Job":
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": APP_NS},
                "spec": {"backoffLimit": 0, "template": {"metadata": {"annotations": annotations}, "spec": spec}}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": APP_NS, "annotations": annotations},
            "spec": spec}


def test_webhook_injects_native_sidecar_init_only_and_exec_pods(chart, wait_pod):
    """The apiserver calls the webhook through its Service (endpoints: there is no kube-proxy);
    the injected agents reach the mock vault through webhook.agentArgs and trust its CA through
    webhook.agentCAConfigMap. native (non-root), sidecar, init-only (a Job, non-root) and exec
    pods all run and read their secret."""
    tenant = {"kvmount.io/tenant-id": chart.vault["tenant"]}
    file = {"kvmount.io/secret-db-password": "secret/db-password", **tenant}
    chart.cluster.apply(injected("inj-native", "native", file, NON_ROOT))
    chart.cluster.apply(injected("inj-sidecar", "sidecar", file))
    chart.cluster.apply(injected("inj-init", "init-only", file, NON_ROOT,
                                 command="cat /mnt/secrets/db-password; echo; stat -L -c '%g' /mnt/secrets/db-password",
                                 kind="Job"))
    chart.cluster.apply(injected("inj-exec", "native", {"kvmount.io/env-DB_PASSWORD": "secret/db-password", **tenant},
                                 NON_ROOT, command='echo "password=$DB_PASSWORD"; sleep 3600'))
    for name in ("inj-native", "inj-sidecar", "inj-exec"):
        pod = wait_pod(APP_NS, name, timeout=120)
        assert pod["metadata"]["annotations"].get("kvmount.io/status") == "injected", pod["metadata"]["annotations"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert any((v.get("configMap") or {}).get("name") == CA_CONFIGMAP for v in volumes.values()), volumes
    for name in ("inj-native", "inj-sidecar"):
        got = chart.cat(name, "/mnt/secrets/db-password")
        assert got.returncode == 0 and got.stdout == "cluster-secret-1", (name, got.stderr)
    assert chart.kubectl("exec", "-n", APP_NS, "inj-native", "--", "stat", "-L", "-c", "%g",
                         "/mnt/secrets/db-password").strip() == "2000"
    wait_for("inj-exec prints its environment", lambda: (
        "password=" in chart.kubectl("logs", "-n", APP_NS, "inj-exec", "-c", "app", check=False).stdout,
        chart.kubectl("logs", "-n", APP_NS, "inj-exec", "-c", "app", check=False).stdout), 30)
    assert chart.kubectl("logs", "-n", APP_NS, "inj-exec", "-c", "app").strip() == "password=cluster-secret-1"
    # exec leaves its configuration out of the app's environment.
    environ = chart.kubectl("exec", "-n", APP_NS, "inj-exec", "-c", "app", "--", "cat", "/proc/1/environ")
    assert "DB_PASSWORD=cluster-secret-1" in environ.split("\0")
    assert not [v for v in environ.split("\0") if v.startswith("KVMOUNT_EXEC_CONFIG=")]

    def job_done():
        job = json.loads(chart.kubectl("get", "job", "inj-init", "-n", APP_NS, "-o", "json"))
        conds = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions") or []}
        return conds.get("Complete") == "True" or conds.get("Failed") == "True", conds

    conds = wait_for("the init-only Job finishes", job_done, 120)
    assert conds.get("Complete") == "True", conds
    out = chart.kubectl("logs", "-n", APP_NS, "job/inj-init", "-c", "app").split()
    assert out == ["cluster-secret-1", "2000"], out
    chart.kubectl("delete", "pods,jobs", "--all", "-n", APP_NS, "--wait=false")


def test_native_agent_without_a_render_holds_the_app_back_and_its_pod_still_goes(chart):
    """A native pod whose secret does not exist: the agent's postStart hook (`probe --wait
    20s`) fails, the kubelet reports FailedPostStartHook and restarts the agent, the app
    container never starts, and deleting the pod (which the kubelet holds while a hook runs)
    is done within the hook's wait plus the grace period."""
    chart.cluster.apply(injected("inj-norender", "native", {
        "kvmount.io/secret-missing": "secret/no-such-secret", "kvmount.io/tenant-id": chart.vault["tenant"]}))

    def hook_failed():
        items = json.loads(chart.kubectl("get", "events", "-n", APP_NS, "--field-selector",
                                         "involvedObject.name=inj-norender,reason=FailedPostStartHook",
                                         "-o", "json"))["items"]
        return bool(items), [e["message"] for e in items]

    wait_for("a FailedPostStartHook event for pod inj-norender", hook_failed, 90)
    status = chart.pod_json("inj-norender")["status"]
    app = [c for c in status.get("containerStatuses") or [] if c["name"] == "app"]
    assert app and "waiting" in app[0]["state"], status
    assert status["phase"] == "Pending", status
    started = time.monotonic()
    delete_pods(chart, "inj-norender")
    took = time.monotonic() - started
    assert took < 20 + 1 + 30, f"deleting took {took:.0f} s"


# ------------------------------------------------------------------------------------------
# 9.-10. Upgrade and uninstall


def test_helm_upgrade_to_a_new_image_tag_loses_nothing(chart, wait_pod):
    """The same images under another tag, `helm upgrade --reuse-values --set image.tag=...`
    while pods run: the DaemonSet pod is replaced by one on the new tag, which re-adopts the
    running pods' volumes; they and an injected pod keep reading the same content; the
    webhook keeps its CA (lookup) and injects with the new agent image."""
    attrs = chart.inline_attrs()
    chart.cluster.apply(csi_pod("up-a", attrs))
    chart.cluster.apply(csi_pod("up-b", attrs, NON_ROOT))
    chart.cluster.apply(injected("up-inj", "native", {"kvmount.io/secret-db-password": "secret/db-password",
                                                      "kvmount.io/tenant-id": chart.vault["tenant"]}, NON_ROOT))
    readers = {"up-a": "/mnt/s/db-password", "up-b": "/mnt/s/db-password", "up-inj": "/mnt/secrets/db-password"}
    for name, path in readers.items():
        wait_pod(APP_NS, name, timeout=120)
        assert chart.cat(name, path).stdout == "cluster-secret-1"
    old = chart.node_pod()["metadata"]["name"]
    ca_before = chart.kubectl("get", "mutatingwebhookconfiguration", f"{RELEASE}-webhook",
                              "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
    _, _, tag = split_image(chart.images["provider"])
    new_tag = tag + UPGRADE_TAG_SUFFIX
    for ref in (chart.images["provider"], chart.images["sidecar"]):
        chart.cluster.ctr("images", "tag", "--force", ref, ref.rsplit(":", 1)[0] + ":" + new_tag)
    t0 = time.monotonic()
    chart.helm("upgrade", RELEASE, CHART_DIR, "-n", RELEASE_NS, "--reuse-values", f"--set=image.tag={new_tag}",
               "--wait", "--timeout=3m")
    chart.timings["helm upgrade --wait"] = time.monotonic() - t0
    pod = chart.node_pod()
    assert pod["metadata"]["name"] != old
    assert pod["spec"]["containers"][0]["image"].endswith(":" + new_tag), pod["spec"]["containers"][0]["image"]
    log = chart.node_log(pod["metadata"]["name"])
    adopted = re.search(r"adopted=(\d+)", log)
    assert adopted and int(adopted.group(1)) == 2, log[-3000:]
    for name, path in readers.items():
        got = chart.cat(name, path)
        assert got.returncode == 0 and got.stdout == "cluster-secret-1", (name, got.stderr)
    assert chart.kubectl("get", "mutatingwebhookconfiguration", f"{RELEASE}-webhook",
                         "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}") == ca_before
    # The upgraded webhook injects the new agent image (server-side dry run: admission only).
    dry = json.loads(chart.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(
        injected("dry", "native", {"kvmount.io/secret-x": "secret/db-password",
                                   "kvmount.io/tenant-id": chart.vault["tenant"]}))))
    images = [c["image"] for c in dry["spec"].get("initContainers") or []]
    assert images and all(i.endswith(":" + new_tag) for i in images), images
    # The new daemon serves the adopted volumes: they unpublish cleanly.
    uids = delete_pods(chart, "up-a", "up-b", "up-inj")
    for uid in uids:
        assert not mountinfo_lines(uid), mountinfo_lines(uid)
    assert not state_records(chart), state_records(chart)


def test_helm_uninstall_leaves_no_mount_socket_or_file_on_the_node(chart):
    """Run last: after the pods and `helm uninstall`, nothing of kvmount is left on the node: no
    process, no CSI mount, no socket in the kubelet's plugin and registration dirs, no file in
    the state dir; the CSINode no longer lists the driver; the cluster objects are gone."""
    cluster = chart.cluster
    cluster.kubectl("delete", "pods,jobs", "--all", "-n", APP_NS, "--wait=true", "--timeout=90s")
    t0 = time.monotonic()
    chart.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout=2m")
    chart.installed = False
    chart.timings["helm uninstall --wait"] = time.monotonic() - t0

    def gone():
        left = chart.kubectl("get", "pods", "-n", RELEASE_NS, "-o", "name").split()
        return not left, left

    wait_for("kvmount's pods gone", gone, 60)
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                cg = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0]
        except OSError:
            continue
        if cluster.cgroup_root in cg and os.path.basename(cmd) in (b"kvmount-provider", b"kvmount-sidecar", b"kvmount-agent"):
            procs.append((pid, cmd))
    assert not procs, procs
    assert not csi_mounts(cluster), csi_mounts(cluster)
    assert not mountinfo_lines(os.path.join(cluster.kubelet_root, "plugins", DRIVER))

    def listed():
        csinode = json.loads(chart.kubectl("get", "csinode", cluster.node_name, "-o", "json"))
        drivers = [d["name"] for d in csinode["spec"].get("drivers") or []]
        return DRIVER not in drivers, drivers

    wait_for(f"the CSINode no longer lists {DRIVER}", listed, 30)
    files = []
    empty_dirs = []
    for top in (os.path.join(cluster.kubelet_root, "plugins", DRIVER), os.path.join(cluster.kubelet_root, "plugins_registry"),
                chart.state_dir):
        for dirpath, dirnames, filenames in os.walk(top):
            files += [os.path.join(dirpath, f) for f in filenames]
            if not dirnames and not filenames and dirpath != os.path.join(cluster.kubelet_root, "plugins_registry"):
                empty_dirs.append(dirpath)
    assert not files, files
    # The hostPath volumes' directories stay (the kubelet created them; nobody removes them):
    # printed, not failed.
    print(f"empty directories left after uninstall: {empty_dirs}")
    for kind, name in (("csidriver", DRIVER), ("mutatingwebhookconfiguration", f"{RELEASE}-webhook"),
                       ("clusterrole", f"{RELEASE}-node"), ("clusterrole", f"{RELEASE}-webhook")):
        assert chart.kubectl("get", kind, name, "--ignore-not-found", "-o", "name").strip() == "", (kind, name)
