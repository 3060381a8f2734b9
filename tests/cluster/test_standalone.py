"""Standalone mode on the real kubelet: kvmount is the CSI driver (secrets.kvmount.io), as a
process on the node that registers itself with the kubelet (`--plugin-registration-dir`, the
kubelet's pluginregistration.v1 service, no registrar); a root and a non-root pod (runAsUser,
runAsGroup, fsGroup) read their files, with the owner and modes the kubelet's fsGroup asks for.
Skipped with a kvmount that cannot register itself (before issue 19's product change)."""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import ROOT, WI_CLIENT_ID, WI_NAMESPACE, dump, stop_process
from kvmount_stack import wait_csinode_lists

DRIVER = "secrets.kvmount.io"


def provider_binary():
    return os.environ.get("KVMOUNT_PROVIDER_BIN", os.path.join(ROOT, "target", "debug", "kvmount-provider"))


@pytest.fixture
def standalone(request, cluster, mock_vault):
    binary = provider_binary()
    if "--plugin-registration-dir" not in subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout:
        pytest.skip("this kvmount-provider cannot register itself with the kubelet (--plugin-registration-dir)")
    # The CSIDriver object as the chart renders it for standalone mode.
    cluster.apply({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER},
                   "spec": {"attachRequired": False, "podInfoOnMount": True, "volumeLifecycleModes": ["Ephemeral"],
                            "requiresRepublish": True, "fsGroupPolicy": "None",
                            "tokenRequests": [{"audience": "api://AzureADTokenExchange"}]}})
    cluster.kubectl("create", "namespace", WI_NAMESPACE)
    cluster.kubectl("create", "serviceaccount", "app", "-n", WI_NAMESPACE)
    state = tempfile.mkdtemp(dir="/dev/shm", prefix="kvmount-cluster-state.")
    plugin_dir = os.path.join(cluster.kubelet_root, "plugins", DRIVER)
    os.makedirs(plugin_dir, exist_ok=True)
    port = mock_vault["url"].rsplit(":", 1)[1].strip("/")
    p = cluster.spawn("kvmount-standalone", [
        binary, "serve", "--csi-socket", os.path.join(plugin_dir, "csi.sock"),
        "--provider-socket", os.path.join(plugin_dir, "provider.sock"), "--node-id", cluster.node_name,
        "--plugin-registration-dir", os.path.join(cluster.kubelet_root, "plugins_registry"),
        "--state-dir", state, "--kubeconfig", cluster.kubeconfig, "--log-level", "debug",
        "--keyvault-dns-suffix", "vault.localhost", "--authority-host", mock_vault["url"],
        "--ca-file", mock_vault["ca"], "--resolve", f"*.vault.localhost=127.0.0.1:{port}"])
    yield p
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(cluster, WI_NAMESPACE)
    cluster.kubectl("delete", "namespace", WI_NAMESPACE, "--wait=true", "--timeout=90s", check=False)
    stop_process(p, grace=15)
    shutil.rmtree(state, ignore_errors=True)
    # The chart (test_chart.py) owns this object when it installs; leave none behind.
    cluster.kubectl("delete", "csidriver", DRIVER, "--ignore-not-found", check=False)


def test_standalone_registers_itself_and_pods_read_their_files(cluster, standalone, mock_vault, wait_pod):
    drivers = wait_csinode_lists(cluster, DRIVER, 60)
    assert DRIVER in drivers, f"CSINode drivers: {drivers}\n{cluster.log_of('kvmount-standalone', 40)}"

    attrs = {"keyvaultName": "cluster", "tenantID": mock_vault["tenant"], "clientID": WI_CLIENT_ID,
             "objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"}
    contexts = {"root": {}, "nonroot": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}}
    for name, ctx in contexts.items():
        cluster.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": WI_NAMESPACE},
            "spec": {"serviceAccountName": "app", "terminationGracePeriodSeconds": 1, "securityContext": ctx,
                     "containers": [{"name": "c", "image": "kvmount.test/busybox:1", "imagePullPolicy": "Never",
                                     "command": ["/bin/sh", "-c", "sleep 3600"],
                                     "volumeMounts": [{"name": "s", "mountPath": "/mnt/s", "readOnly": True}]}],
                     "volumes": [{"name": "s", "csi": {"driver": DRIVER, "readOnly": True, "volumeAttributes": attrs}}]}})
    pods = {name: wait_pod(WI_NAMESPACE, name, timeout=120) for name in contexts}
    for name in pods:
        got = cluster.kubectl("exec", "-n", WI_NAMESPACE, name, "--", "cat", "/mnt/s/db-password", check=False)
        assert got.returncode == 0 and got.stdout == "cluster-secret-1", got.stderr
    seen = cluster.kubectl("exec", "-n", WI_NAMESPACE, "nonroot", "--", "stat", "-L", "-c", "%g", "/mnt/s", "/mnt/s/db-password")
    assert seen.split() == ["2000", "2000"], seen
    for name, pod in pods.items():
        cluster.kubectl("delete", "pod", name, "-n", WI_NAMESPACE, "--wait=true", "--timeout=90s")
        with open("/proc/self/mountinfo") as f:
            assert not [line for line in f if pod["metadata"]["uid"] in line]
