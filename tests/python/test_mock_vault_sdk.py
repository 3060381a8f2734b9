"""The official Python SDK (azure-keyvault-secrets + azure-identity) against the kvmount mock vault.

Run:
    KVMOUNT_MOCK_VAULT_CMD="target/debug/kvmount-provider mock-vault" pytest tests/python

KVMOUNT_MOCK_VAULT_CMD is the command that serves the mock (split like a shell would); the test
appends `--listen 127.0.0.1:0 --tls-dir <tmp>`, waits for the ready line on stdout, and kills the
process at the end of the session, also when tests fail.

Two client settings are needed against a mock on a non-443 port:
- `disable_instance_discovery=True`: otherwise MSAL asks login.microsoftonline.com to validate
  the authority host before anything else.
- `verify_challenge_resource=False`: the Python SDK compares the challenge resource host with the
  request's host *including the port* (`demo.vault.localhost:PORT`), which only matches on 443.
  The Rust SDK compares host names only and keeps the check on.
"""

import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import tempfile
import threading
import urllib.request

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import ClientAssertionCredential, ClientSecretCredential
from azure.keyvault.secrets import SecretClient

TENANT = "00000000-0000-0000-0000-000000000001"
APP_A = "00000000-0000-0000-0000-00000000000a"
APP_B = "00000000-0000-0000-0000-00000000000b"
READY = re.compile(r"^kvmount mock vault ready (.*)$")


class Mock:
    def __init__(self, cmd, tls_dir, url, ca, dns_suffix, tenant):
        self.cmd = cmd
        self.tls_dir = tls_dir
        self.url = url
        self.ca = ca
        self.dns_suffix = dns_suffix
        self.tenant = tenant
        self.port = int(url.rsplit(":", 1)[1])

    def vault_url(self, vault):
        return f"https://{vault}.{self.dns_suffix}:{self.port}/"

    def credential(self, client_id, secret):
        return ClientSecretCredential(
            self.tenant,
            client_id,
            secret,
            authority=self.url,
            connection_verify=self.ca,
            disable_instance_discovery=True,
        )

    def client(self, client_id=APP_A, secret="app-a-password", vault="demo"):
        return SecretClient(
            vault_url=self.vault_url(vault),
            credential=self.credential(client_id, secret),
            connection_verify=self.ca,
            verify_challenge_resource=False,
        )

    def admin(self, method, path, body=None):
        ctx = ssl.create_default_context(cafile=self.ca)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def count(self, route, status=None, object_=None):
        stats = self.admin("GET", "/_mock/stats")
        return sum(
            e["count"]
            for e in stats["entries"]
            if e["route"] == route
            and (status is None or e["status"] == status)
            and (object_ is None or e["object"] == object_)
        )


def _patch_resolver(suffix):
    """Resolve *.<suffix> to 127.0.0.1 inside this process only (never /etc/hosts)."""
    real = socket.getaddrinfo

    def patched(host, *args, **kwargs):
        if isinstance(host, str) and (host == suffix or host.endswith("." + suffix)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = patched
    return real


@pytest.fixture(scope="session")
def mock():
    cmd = os.environ.get("KVMOUNT_MOCK_VAULT_CMD")
    if not cmd:
        pytest.fail("set KVMOUNT_MOCK_VAULT_CMD to the mock vault command, e.g. 'target/debug/kvmount-provider mock-vault'")
    tls_dir = tempfile.mkdtemp(prefix="kvmount-mock-tls-")
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        shlex.split(cmd) + ["--listen", "127.0.0.1:0", "--tls-dir", tls_dir],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    real_getaddrinfo = None
    try:
        line = [None]

        def read_ready():
            line[0] = proc.stdout.readline()

        t = threading.Thread(target=read_ready, daemon=True)
        t.start()
        t.join(60)
        m = READY.match((line[0] or "").strip())
        if not m:
            stderr.seek(0)
            pytest.fail(f"mock vault did not print its ready line: {line[0]!r}; stderr: {stderr.read()[-2000:]!r}")
        fields = dict(kv.split("=", 1) for kv in m.group(1).split())
        assert fields["tenant"] == TENANT
        real_getaddrinfo = _patch_resolver(fields["dns-suffix"])
        yield Mock(shlex.split(cmd), tls_dir, fields["url"], fields["ca"], fields["dns-suffix"], fields["tenant"])
    finally:
        if real_getaddrinfo is not None:
            socket.getaddrinfo = real_getaddrinfo
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        stderr.close()


def test_get_latest_and_by_version(mock):
    client = mock.client()
    latest = client.get_secret("db-password")
    assert latest.value == "current-value"
    assert len(latest.properties.version) == 32
    versions = sorted(client.list_properties_of_secret_versions("db-password"), key=lambda p: p.created_on)
    assert len(versions) == 2
    first = client.get_secret("db-password", versions[0].version)
    assert first.value == "old-value"


def test_set_creates_a_new_version(mock):
    client = mock.client()
    before = client.get_secret("api-key").properties.version
    made = client.set_secret("api-key", "rotated-by-python", content_type="text/plain", tags={"by": "pytest"})
    assert made.value == "rotated-by-python"
    assert made.properties.version != before
    got = client.get_secret("api-key")
    assert got.value == "rotated-by-python"
    assert got.properties.content_type == "text/plain"
    assert got.properties.tags == {"by": "pytest"}


def test_list_versions_is_paged(mock):
    client = mock.client()
    for i in range(4):
        client.set_secret("paged", f"value-{i}")
    pages = list(client.list_properties_of_secret_versions("paged", max_page_size=2).by_page())
    sizes = [len(list(p)) for p in pages]
    assert sizes == [2, 2], sizes
    names = [p.name for p in client.list_properties_of_secrets()]
    assert "paged" in names and "db-password" in names


def test_delete_polls_the_deleted_secret(mock):
    client = mock.client()
    client.set_secret("to-delete", "bye")
    poller = client.begin_delete_secret("to-delete")
    deleted = poller.result()  # the Key Vault poller's result() does not wait...
    poller.wait()  # ...wait() polls get_deleted_secret until it answers 200
    assert poller.done()
    assert deleted.name == "to-delete"
    assert deleted.recovery_id.endswith("/deletedsecrets/to-delete")
    assert deleted.deleted_date is not None and deleted.scheduled_purge_date is not None
    assert client.get_deleted_secret("to-delete").name == "to-delete"
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("to-delete")
    client.purge_deleted_secret("to-delete")
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret("to-delete")
    assert mock.count("deleted_secret.get", 200, "secret/to-delete") >= 2
    assert mock.count("deleted_secret.get", 404, "secret/to-delete") >= 1


def test_missing_secret_is_not_found(mock):
    with pytest.raises(ResourceNotFoundError) as e:
        mock.client().get_secret("no-such-secret")
    assert e.value.status_code == 404
    assert "SecretNotFound" in str(e.value)


def test_forbidden_identity(mock):
    with pytest.raises(HttpResponseError) as e:
        mock.client(APP_B, "app-b-password").get_secret("db-password")
    assert e.value.status_code == 403
    assert f"appid={APP_B}" in str(e.value)


def test_wrong_client_secret(mock):
    with pytest.raises(ClientAuthenticationError) as e:
        mock.client(APP_A, "wrong-password").get_secret("db-password")
    assert "AADSTS7000215" in str(e.value)


def test_throttling_is_retried(mock):
    mock.admin("DELETE", "/_mock/stats")
    mock.admin(
        "PUT",
        "/_mock/faults",
        {"rules": [{"route": "secret.get", "object": "secret/db-password", "status": 429, "retryAfter": 1, "times": 2}]},
    )
    try:
        assert mock.client().get_secret("db-password").value == "current-value"
    finally:
        mock.admin("DELETE", "/_mock/faults")
    assert mock.count("secret.get", 429, "secret/db-password") == 2
    assert mock.count("secret.get", 200, "secret/db-password") == 1


def _mint(mock, namespace, service_account):
    out = subprocess.run(
        mock.cmd + ["--tls-dir", mock.tls_dir, "mint-token", "--namespace", namespace, "--service-account", service_account],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


def _assertion_client(mock, client_id, namespace):
    credential = ClientAssertionCredential(
        mock.tenant,
        client_id,
        lambda: _mint(mock, namespace, "app"),
        authority=mock.url,
        connection_verify=mock.ca,
        disable_instance_discovery=True,
    )
    return SecretClient(
        vault_url=mock.vault_url("demo"),
        credential=credential,
        connection_verify=mock.ca,
        verify_challenge_resource=False,
    )


def test_federated_service_account_token(mock):
    assert _assertion_client(mock, APP_A, "team-a").get_secret("db-password").value == "current-value"
    with pytest.raises(ClientAuthenticationError) as e:
        _assertion_client(mock, APP_A, "team-b").get_secret("db-password")
    assert "AADSTS70021" in str(e.value)
