"""Provider mode with the real upstream Secrets Store CSI Driver (v1.6.0 and v1.5.4, as a
process on the node registered with the kubelet): kvmount serves the driver's provider socket;
pods mount a SecretProviderClass with workload identity (the kubelet's service-account token
for api://AzureADTokenExchange, exchanged at the mock vault, which trusts the cluster's issuer)
and read their secrets, root and non-root; the driver's secretObjects sync and its rotation
work with kvmount as the provider; deleting the pods unmounts."""

import base64
import json
import os
import time

import pytest

from conftest import WI_CLIENT_ID, WI_NAMESPACE, dump, vault_call


@pytest.fixture
def wi_namespace(request, cluster):
    cluster.kubectl("create", "namespace", WI_NAMESPACE)
    cluster.kubectl("create", "serviceaccount", "app", "-n", WI_NAMESPACE)
    yield WI_NAMESPACE
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(cluster, WI_NAMESPACE)
    # Deleted and gone before the next test creates it again.
    cluster.kubectl("delete", "namespace", WI_NAMESPACE, "--wait=true", "--timeout=90s", check=False)


def app_pod(name, security_context=None):
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": WI_NAMESPACE},
        "spec": {
            "serviceAccountName": "app", "terminationGracePeriodSeconds": 1,
            "securityContext": security_context or {},
            "containers": [{"name": "c", "image": "kvmount.test/busybox:1", "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", "sleep 3600"],
                            "volumeMounts": [{"name": "s", "mountPath": "/mnt/s", "readOnly": True}]}],
            "volumes": [{"name": "s", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                              "volumeAttributes": {"secretProviderClass": "wi"}}}],
        },
    }


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(1)
    pytest.fail(f"{what} within {timeout}s; last: {last!r}")


@pytest.mark.parametrize("version", ["v1.6.0", "v1.5.4"])
def test_pods_read_secrets_through_the_upstream_driver_and_kvmount(
        cluster, upstream_driver, kvmount_provider, mock_vault, wi_namespace, wait_pod, version):
    ns = wi_namespace
    token = cluster.kubectl("create", "token", "app", "-n", ns, "--audience=api://AzureADTokenExchange").strip()
    rotating = "rot-" + version.replace(".", "-")

    def put(value):
        got = vault_call(cluster, mock_vault, token, "PUT", f"/secrets/{rotating}?api-version=7.4", json.dumps({"value": value}))
        assert got.get("status") == 200, got

    put(f"{version}-first")
    driver = upstream_driver(version, extra_args=["--enable-secret-rotation", "--rotation-poll-interval=5s"],
                             token_audiences=["api://AzureADTokenExchange"])
    kvmount_provider(os.path.join(driver.provider_dir, "kvmount.sock"), "--rotation-interval", "5s")
    objects = "array:\n" + "".join(f"  - |\n    objectName: {n}\n    objectType: secret\n" for n in ("db-password", rotating))
    cluster.apply({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": {"name": "wi", "namespace": ns},
        "spec": {"provider": "kvmount",
                 "parameters": {"keyvaultName": "cluster", "tenantID": mock_vault["tenant"], "clientID": WI_CLIENT_ID,
                                "objects": objects},
                 "secretObjects": [{"secretName": "synced", "type": "Opaque",
                                    "data": [{"objectName": rotating, "key": "value"}]}]},
    })
    cluster.apply(app_pod("root"))
    cluster.apply(app_pod("nonroot", {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}))
    pods = {name: wait_pod(ns, name, timeout=120) for name in ("root", "nonroot")}

    def cat(pod, name):
        return cluster.kubectl("exec", "-n", ns, pod, "--", "cat", f"/mnt/s/{name}", check=False)

    for pod in pods:
        assert cat(pod, "db-password").stdout == "cluster-secret-1", cat(pod, "db-password")
        assert cat(pod, rotating).stdout == f"{version}-first"
    # What the non-root pod sees of the driver's files (printed: the kubelet does no chown for
    # this driver's CSIDriver, which has no fsGroupPolicy, and sends no volume_mount_group).
    print(f"{version} non-root pod: " + cluster.kubectl("exec", "-n", ns, "nonroot", "--", "sh", "-c",
                                                        "id; ls -ln /mnt/s/ /mnt/s/..data/"))

    # The driver records each mount (its SecretProviderClassPodStatus, through its own RBAC) and
    # syncs the object into the Secret named by secretObjects.
    statuses = json.loads(cluster.kubectl("get", "secretproviderclasspodstatuses", "-n", ns, "-o", "json"))["items"]
    assert sorted(s["status"]["mounted"] for s in statuses) == [True, True], statuses

    def synced():
        got = cluster.kubectl("get", "secret", "synced", "-n", ns, "-o", "jsonpath={.data.value}", check=False).stdout
        return base64.b64decode(got).decode() if got else None

    wait_for("the synced Secret", lambda: (synced() == f"{version}-first", synced()), 30)

    # Rotation: a new version in the vault reaches both pods' files and the synced Secret (the
    # driver's rotation calls Mount every 5 s; kvmount re-reads the object every 5 s per node).
    put(f"{version}-second")
    for pod in pods:
        wait_for(f"{pod} reads the new version", lambda: (cat(pod, rotating).stdout == f"{version}-second",
                                                         cat(pod, rotating).stdout), 90)
    wait_for("the synced Secret's new version", lambda: (synced() == f"{version}-second", synced()), 60)

    # Deleting the pods unpublishes: the kubelet's targets are gone, nothing stays mounted.
    for name, pod in pods.items():
        uid = pod["metadata"]["uid"]
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true", "--timeout=90s")
        assert not os.path.exists(os.path.join(cluster.kubelet_root, "pods", uid, "volumes", "kubernetes.io~csi", "s", "mount"))
        with open("/proc/self/mountinfo") as f:
            assert not [line for line in f if uid in line]
