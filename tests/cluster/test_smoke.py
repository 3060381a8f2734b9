"""The cluster itself, before anything of kvmount: the node, native Secret volumes (root and
non-root with fsGroup), exec and logs through the kubelet, the service-account issuer the mock
vault trusts, and the upstream Secrets Store CSI Driver registered with the kubelet."""

import base64
import json
import subprocess
import time

import pytest

from conftest import vault_call
from kvmount_stack import wait_csinode_lists


def secret_pod(name, command, security_context=None):
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": security_context or {},
            "containers": [{"name": "c", "image": "kvmount.test/busybox:1", "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", command],
                            "volumeMounts": [{"name": "s", "mountPath": "/etc/s", "readOnly": True}]}],
            "volumes": [{"name": "s", "secret": {"secretName": "smoke"}}],
        },
    }


def create_secret(cluster, namespace, value):
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "smoke", "namespace": namespace},
                   "data": {"key": base64.b64encode(value.encode()).decode()}})


def test_node_is_ready_at_the_built_version(cluster):
    node = json.loads(cluster.kubectl("get", "node", cluster.node_name, "-o", "json"))
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == cluster.node_ip
    version = json.loads(cluster.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"


def test_pod_reads_a_secret_volume(cluster, namespace, wait_pod):
    create_secret(cluster, namespace, "smoke-value-1")
    cluster.apply(dict(secret_pod("reader", "cat /etc/s/key; echo; sleep 3600"), metadata={"name": "reader", "namespace": namespace}))
    wait_pod(namespace, "reader")
    # logs and exec go through the kubelet's server on the node IP
    deadline = time.monotonic() + 10
    while "smoke-value-1" not in cluster.kubectl("logs", "-n", namespace, "reader") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.kubectl("logs", "-n", namespace, "reader").strip() == "smoke-value-1"
    assert cluster.kubectl("exec", "-n", namespace, "reader", "--", "cat", "/etc/s/key") == "smoke-value-1"
    cluster.kubectl("delete", "pod", "-n", namespace, "reader", "--wait=true", "--timeout=60s")


def test_non_root_pod_sees_its_fs_group_on_a_secret_volume(cluster, namespace, wait_pod):
    create_secret(cluster, namespace, "smoke-value-2")
    ctx = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}
    cluster.apply(dict(secret_pod("nonroot", "id -u; id -G; stat -L -c '%g %a' /etc/s/key; cat /etc/s/key", ctx),
                       metadata={"name": "nonroot", "namespace": namespace}))
    wait_pod(namespace, "nonroot", phase="Succeeded")
    uid, groups, stat, value = cluster.kubectl("logs", "-n", namespace, "nonroot").splitlines()
    assert uid == "1000"
    assert "2000" in groups.split()
    gid, mode = stat.split()
    # the kubelet sets the volume's group to the fsGroup (mode 0644 | g+r, as Secret volumes are)
    assert gid == "2000", stat
    assert int(mode, 8) & 0o040, stat
    assert value == "smoke-value-2"


def test_service_account_issuer_is_what_the_mock_vault_is_given(cluster):
    """The issuer and key a relying party (the mock vault, for workload identity) trusts: the
    apiserver's discovery document names the issuer, and its JWKS holds the key of sa.pub."""
    disco = json.loads(cluster.kubectl("get", "--raw", "/.well-known/openid-configuration"))
    assert disco["issuer"] == cluster.sa_issuer
    keys = cluster.jwks()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA"
    modulus = subprocess.run(["openssl", "pkey", "-pubin", "-in", cluster.sa_public_key, "-noout", "-text"],
                             check=True, capture_output=True, text=True).stdout
    n = int("".join(modulus.split("Modulus:")[1].split("Exponent")[0].split()).replace(":", ""), 16)
    jwk_n = int.from_bytes(base64.urlsafe_b64decode(keys[0]["n"] + "=" * (-len(keys[0]["n"]) % 4)), "big")
    assert n == jwk_n
    # A token for the Azure workload-identity audience carries that issuer.
    token = cluster.kubectl("create", "token", "default", "--audience=api://AzureADTokenExchange").strip()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=" * (-len(token.split(".")[1]) % 4)))
    assert payload["iss"] == cluster.sa_issuer
    assert payload["aud"] == ["api://AzureADTokenExchange"]
    assert payload["sub"] == "system:serviceaccount:default:default"


@pytest.mark.parametrize("version", ["v1.6.0", "v1.5.4"])
def test_upstream_driver_registers_with_the_kubelet(cluster, upstream_driver, version):
    """The upstream driver as a process on the node, registered by the test registrar: the
    kubelet lists it in the CSINode object."""
    d = upstream_driver(version)
    drivers = wait_csinode_lists(cluster, d.NAME, 60)
    assert d.NAME in drivers, (f"CSINode drivers: {drivers}\nregistrar:\n{cluster.log_of('registrar-' + version)}\n"
                               f"driver:\n{cluster.log_of('driver-' + version, 40)}\nkubelet:\n{cluster.log_of('kubelet', 60)}")
    log = cluster.log_of("registrar-" + version)
    assert "registered=true" in log
    # What the kubelet's registration client sends as :authority (kvmount's own registration
    # service must accept it; hyper's h2 refuses an authority that is not a valid URI authority).
    print(f"kubelet registration client: {[line for line in log.splitlines() if 'GetInfo' in line][:1]}")


def test_mock_vault_trusts_the_cluster_service_account_tokens(cluster, mock_vault):
    """Workload identity end to end outside kvmount: a token the apiserver issues for
    system:serviceaccount:default:app, audience api://AzureADTokenExchange, is a federated
    client assertion the mock vault accepts (it was given the cluster's issuer and key)."""
    cluster.kubectl("create", "serviceaccount", "app", "-n", "default")
    try:
        assertion = cluster.kubectl("create", "token", "app", "-n", "default",
                                    "--audience=api://AzureADTokenExchange").strip()
        got = vault_call(cluster, mock_vault, assertion, "GET", "/secrets/db-password?api-version=7.4")
        assert got["token_status"] == 200, got
        assert got["status"] == 200 and got["body"]["value"] == "cluster-secret-1", got
        # Another service account's token is refused.
        other = cluster.kubectl("create", "token", "default", "-n", "default", "--audience=api://AzureADTokenExchange").strip()
        got = vault_call(cluster, mock_vault, other, "GET", "/secrets/db-password?api-version=7.4")
        assert got["token_status"] in (400, 401), got
    finally:
        cluster.kubectl("delete", "serviceaccount", "app", "-n", "default", check=False)
