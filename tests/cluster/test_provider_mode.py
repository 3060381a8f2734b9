"""Provider mode with the real upstream Secrets Store CSI Driver (v1.6.0 and v1.5.4, as a
process on the node registered with the kubelet): kvmount serves the driver's provider socket,
a pod mounts a SecretProviderClass with workload identity (the kubelet's service-account token
for api://AzureADTokenExchange, exchanged at the mock vault, which trusts the cluster's issuer)
and reads its secret."""

import json
import os

import pytest

from conftest import WI_CLIENT_ID, WI_NAMESPACE, dump


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


@pytest.mark.parametrize("version", ["v1.6.0", "v1.5.4"])
def test_pod_reads_a_secret_through_the_upstream_driver_and_kvmount(
        cluster, upstream_driver, kvmount_provider, mock_vault, wi_namespace, wait_pod, version):
    driver = upstream_driver(version, token_audiences=["api://AzureADTokenExchange"])
    kvmount_provider(os.path.join(driver.provider_dir, "kvmount.sock"))
    cluster.apply({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": {"name": "wi", "namespace": wi_namespace},
        "spec": {"provider": "kvmount", "parameters": {
            "keyvaultName": "cluster", "tenantID": mock_vault["tenant"], "clientID": WI_CLIENT_ID,
            "objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"}},
    })
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": wi_namespace},
        "spec": {
            "serviceAccountName": "app", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "kvmount.test/busybox:1", "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", "sleep 3600"],
                            "volumeMounts": [{"name": "s", "mountPath": "/mnt/s", "readOnly": True}]}],
            "volumes": [{"name": "s", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                              "volumeAttributes": {"secretProviderClass": "wi"}}}],
        },
    })
    pod = wait_pod(wi_namespace, "app", timeout=120)
    assert cluster.kubectl("exec", "-n", wi_namespace, "app", "--", "cat", "/mnt/s/db-password") == "cluster-secret-1"
    # The driver records the mount (its SecretProviderClassPodStatus, through its own RBAC).
    statuses = json.loads(cluster.kubectl("get", "secretproviderclasspodstatuses", "-n", wi_namespace, "-o", "json"))["items"]
    assert [s["status"]["mounted"] for s in statuses] == [True], statuses
    # Deleting the pod unpublishes: the kubelet's target for the volume is gone.
    uid = pod["metadata"]["uid"]
    cluster.kubectl("delete", "pod", "app", "-n", wi_namespace, "--wait=true", "--timeout=90s")
    target = os.path.join(cluster.kubelet_root, "pods", uid, "volumes", "kubernetes.io~csi", "s", "mount")
    assert not os.path.exists(target)
    assert not [line for line in open("/proc/self/mountinfo") if uid in line]
