"""Drop-in parity, checked by an independent library: every row of a table of
SecretProviderClass parameter sets (object types x formats x encodings x version history x auth
modes), and the Azure provider's documented example classes, is mounted through kvmount's real
provider socket against the mock vault; each file's bytes are compared with what Python
`cryptography` derives from the objects the official Python SDKs (azure-keyvault-secrets,
-keys, -certificates) read from the same mock.

Run (tests/run.sh does):
    KVMOUNT_MOCK_VAULT_CMD="target/debug/kvmount-provider mock-vault" pytest tests/python

The provider binary is the first word of KVMOUNT_MOCK_VAULT_CMD. gRPC stubs are generated from
proto/proto/provider.proto with grpcio-tools into a temp dir at test time.
"""

import base64
import json
import os
import pathlib
import re
import shlex
import socket
import subprocess
import tempfile
import time

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from kvmount_support import Proc, stubs

TENANT = "00000000-0000-0000-0000-000000000001"
APP_A = "00000000-0000-0000-0000-00000000000a"
APP_A_SECRET = "app-a-password"
READY = re.compile(r"^kvmount mock vault ready (.*)$")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEED = """
tenantId: 00000000-0000-0000-0000-000000000001
identities:
  - name: app-a
    clientId: 00000000-0000-0000-0000-00000000000a
    clientSecret: app-a-password
    federated:
      - { issuer: https://oidc.kvmount.local, subject: "system:serviceaccount:default:app" }
vaults:
  - name: kvname
    secrets:
      - { name: secret1, versions: ["s1-old", "s1-current"] }
      - { name: secret2, versions: ["s2"] }
      - { name: secret3, versions: ["AAEC/w=="] }
      - { name: hexval, versions: ["00ff10ab"] }
      - { name: rotated, versions: ["r0", "r1", "r2", "r3"] }
      - { name: expired, versions: ["gone"], exp: 1000000000 }
      - { name: notyet, versions: ["later"], nbf: 4000000000 }
      - { name: disabled, versions: ["off"], enabled: false }
    keys:
      - { name: key1, versions: [{ kty: RSA, size: 2048 }] }
      - { name: key2, versions: [{ kty: EC, curve: P-256 }] }
      - { name: rsa3072, versions: [{ kty: RSA, size: 3072 }] }
      - { name: rsa4096, versions: [{ kty: RSA-HSM, size: 4096 }] }
      - { name: ec384, versions: [{ kty: EC, curve: P-384 }] }
      - { name: ec521, versions: [{ kty: EC-HSM, curve: P-521 }] }
      - { name: keyhist, versions: [{ kty: EC }, { kty: EC, curve: P-384 }, { kty: RSA }] }
    certificates:
      - { name: root-ca, ca: true, key: { kty: RSA, size: 2048 } }
      - { name: inter-ca, ca: true, issuer: root-ca }
      - { name: cert1, issuer: inter-ca, dnsNames: [cert1.example], versions: 2 }
      - { name: cert2-pfx, key: { kty: RSA, size: 2048 } }
      - { name: tls-cert, issuer: inter-ca, dnsNames: [tls.example], key: { kty: EC, curve: P-384 } }
      - { name: pem-chain, issuer: inter-ca, contentType: application/x-pem-file, chainOrder: root-first, key: { kty: RSA, size: 2048 } }
      - { name: pem-self, contentType: application/x-pem-file }
"""


# ---- processes ----


class Node:
    """The mock vault, the provider daemon, a provider-API client and the SDK clients."""

    def __init__(self, tmp):
        cmd = os.environ.get("KVMOUNT_MOCK_VAULT_CMD")
        if not cmd:
            pytest.fail("set KVMOUNT_MOCK_VAULT_CMD, e.g. 'target/debug/kvmount-provider mock-vault'")
        self.bin = shlex.split(cmd)[0]
        seed = os.path.join(tmp, "seed.yaml")
        with open(seed, "w") as f:
            f.write(SEED)
        self.tls_dir = os.path.join(tmp, "tls")
        self.mock = Proc(shlex.split(cmd) + ["--seed", seed, "--listen", "127.0.0.1:0", "--tls-dir", self.tls_dir])
        fields = dict(kv.split("=", 1) for kv in self.mock.ready_line(READY).group(1).split())
        self.url, self.ca, self.suffix = fields["url"], fields["ca"], fields["dns-suffix"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.socket = os.path.join(tmp, "kvmount.sock")
        self.cloud_dir = os.path.join(tmp, "clouds")
        os.makedirs(self.cloud_dir, exist_ok=True)
        self.daemon = Proc(
            [self.bin, "serve", "--provider-socket", self.socket, "--keyvault-dns-suffix", self.suffix,
             "--cloud-env-dir", self.cloud_dir,
             "--authority-host", self.url, "--ca-file", self.ca, "--resolve", f"*.{self.suffix}=127.0.0.1:{self.port}",
             "--log-level", "debug"]
        )
        deadline = time.time() + 30
        while not os.path.exists(self.socket):
            assert self.daemon.proc.poll() is None, self.daemon.log()
            assert time.time() < deadline, "provider socket never appeared"
            time.sleep(0.05)
        import grpc

        self.pb, pb_grpc = stubs(tmp, "provider")
        # grpcio's defaults, as a user's client would have them (its :authority is the socket path).
        self.channel = grpc.insecure_channel("unix:" + self.socket)
        self.stub = pb_grpc.CSIDriverProviderStub(self.channel)
        credential = ClientSecretCredential(TENANT, APP_A, APP_A_SECRET, authority=self.url, connection_verify=self.ca, disable_instance_discovery=True)
        vault_url = f"https://kvname.{self.suffix}:{self.port}/"
        opts = dict(connection_verify=self.ca, verify_challenge_resource=False)
        self.secrets = SecretClient(vault_url, credential, **opts)
        self.keys = KeyClient(vault_url, credential, **opts)
        self.certs = CertificateClient(vault_url, credential, **opts)

    def mount(self, objects, extra=None, secrets=None, sp=True):
        attrs = {
            "keyvaultName": "kvname",
            "tenantID": TENANT,
            "objects": objects,
            "csi.storage.k8s.io/pod.name": "pod",
            "csi.storage.k8s.io/pod.namespace": "default",
            "csi.storage.k8s.io/pod.uid": "uid-pod",
        }
        attrs.update(extra or {})
        sec = dict(secrets or {})
        if sp:
            sec.update({"clientid": APP_A, "clientsecret": APP_A_SECRET})
        req = self.pb.MountRequest(attributes=json.dumps(attrs), secrets=json.dumps(sec), target_path="/var/lib/kubelet/pods/uid-pod/volumes/kubernetes.io~csi/v/mount", permission="420")
        resp = self.stub.Mount(req, timeout=60)
        return {f.path: bytes(f.contents) for f in resp.files}, {o.id: o.version for o in resp.object_version}

    def stop(self):
        self.channel.close()
        self.daemon.stop()
        self.mock.stop()


def _patch_resolver(suffix):
    real = socket.getaddrinfo

    def patched(host, *args, **kwargs):
        if isinstance(host, str) and (host == suffix or host.endswith("." + suffix)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = patched
    return real


@pytest.fixture(scope="module")
def node():
    tmp = tempfile.mkdtemp(prefix="kvmount-parity-")
    n = None
    real = None
    try:
        n = Node(tmp)
        real = _patch_resolver(n.suffix)
        yield n
        # Nothing secret in the daemon's logs.
        log = n.daemon.log()
        assert "s1-current" not in log and APP_A_SECRET not in log and "PRIVATE KEY" not in log
    finally:
        if real is not None:
            socket.getaddrinfo = real
        if n is not None:
            n.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)


def objects(*docs):
    out = "array:\n"
    for d in docs:
        out += "  - |\n" + "".join(f"    {line}\n" for line in d.strip().splitlines())
    return out


# ---- what cryptography derives ----

PEM = serialization.Encoding.PEM


def public_key_pem(jwk):
    kty = jwk.kty if isinstance(jwk.kty, str) else jwk.kty.value
    if kty.startswith("RSA"):
        key = rsa.RSAPublicNumbers(int.from_bytes(jwk.e, "big"), int.from_bytes(jwk.n, "big")).public_key()
    else:
        crv = jwk.crv if isinstance(jwk.crv, str) else jwk.crv.value
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[crv]
        key = ec.EllipticCurvePublicNumbers(int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), curve).public_key()
    return key.public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def leaf_first(key, certs):
    """Orders certificates leaf to root: the leaf holds the private key's public key; each
    next certificate is the issuer of the previous."""
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    rest = list(certs)
    leaf = next(c for c in rest if c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == pub)
    out = [leaf]
    rest.remove(leaf)
    while rest:
        nxt = next((c for c in rest if c.subject == out[-1].issuer), None)
        if nxt is None or out[-1].subject == out[-1].issuer:
            break
        out.append(nxt)
        rest.remove(nxt)
    return out + rest


def certs_pem(certs):
    return b"".join(c.public_bytes(PEM) for c in certs)


def split_key_and_certs(data):
    """(private key object, the key block's text, certificate blocks' text) of our PEM."""
    blocks = re.findall(rb"-----BEGIN ([A-Z ]+)-----\n.*?-----END \1-----\n", data, re.S)
    texts = re.findall(rb"(-----BEGIN ([A-Z ]+)-----\n.*?-----END \2-----\n)", data, re.S)
    assert b"".join(t for t, _ in texts) == data, "only PEM blocks, nothing between them"
    key_blocks = [t for t, label in texts if label == b"PRIVATE KEY"]
    assert len(key_blocks) == 1, blocks
    key = serialization.load_pem_private_key(key_blocks[0], None)
    return key, key_blocks[0], [t for t, label in texts if label == b"CERTIFICATE"]


def same_private_key(a, b):
    return a.private_numbers() == b.private_numbers()


def expected_cert_secret(node, name, version=None):
    """What the Azure provider writes for a certificate secret (objectFormat pem), except that
    the chain is leaf first: (key object, certificate PEM text leaf first)."""
    s = node.secrets.get_secret(name, version)
    assert s.properties.content_type in ("application/x-pkcs12", "application/x-pem-file")
    if s.properties.content_type == "application/x-pkcs12":
        key, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
        return key, certs_pem(leaf_first(key, [cert] + list(extra)))
    key = serialization.load_pem_private_key(s.value.encode(), None)
    return key, certs_pem(leaf_first(key, x509.load_pem_x509_certificates(s.value.encode())))


def check_cert_secret_pem(node, name, got, version=None):
    key, chain = expected_cert_secret(node, name, version)
    got_key, key_text, cert_texts = split_key_and_certs(got)
    assert same_private_key(got_key, key)
    assert got.startswith(key_text), "the private key comes first"
    assert b"".join(cert_texts) == chain, "certificates leaf to root, as cryptography orders them"
    # PKCS#8 "PRIVATE KEY", and the exact bytes: key block, then the chain.
    assert got == key_text + chain
    return key, chain


# ---- the table ----


def test_secret_encodings(node):
    files, versions = node.mount(objects(
        "objectName: secret1\nobjectType: secret",
        "objectName: secret3\nobjectType: secret\nobjectEncoding: base64\nobjectAlias: bin",
        "objectName: hexval\nobjectType: secret\nobjectEncoding: hex",
        "objectName: secret2\nobjectType: secret\nobjectEncoding: utf-8\nobjectAlias: dir/s2",
    ))
    assert files["secret1"] == node.secrets.get_secret("secret1").value.encode()
    assert files["bin"] == base64.b64decode(node.secrets.get_secret("secret3").value)
    assert files["hexval"] == bytes.fromhex(node.secrets.get_secret("hexval").value)
    assert files["dir/s2"] == b"s2"
    assert versions["secret/secret1"] == node.secrets.get_secret("secret1").properties.version


@pytest.mark.parametrize("name", ["key1", "key2", "rsa3072", "rsa4096", "ec384", "ec521"])
def test_keys_are_pkix_public_keys(node, name):
    files, versions = node.mount(objects(f"objectName: {name}\nobjectType: key"))
    key = node.keys.get_key(name)
    assert files[name] == public_key_pem(key.key)
    assert files[name].startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert versions[f"key/{name}"] == key.properties.version


def test_cert_is_the_leaf_certificate(node):
    files, versions = node.mount(objects("objectName: cert1\nobjectType: cert"))
    cert = node.certs.get_certificate("cert1")
    assert files["cert1"] == x509.load_der_x509_certificate(bytes(cert.cer)).public_bytes(PEM)
    assert versions["cert/cert1"] == cert.properties.version


@pytest.mark.parametrize("name", ["cert1", "tls-cert", "cert2-pfx", "pem-chain", "pem-self"])
def test_certificate_secrets_as_pem(node, name):
    files, _ = node.mount(objects(f"objectName: {name}\nobjectType: secret"))
    check_cert_secret_pem(node, name, files[name])


def test_pem_stored_chain_is_normalised_leaf_first(node):
    stored = node.secrets.get_secret("pem-chain").value.encode()
    files, _ = node.mount(objects("objectName: pem-chain\nobjectType: secret"))
    assert files["pem-chain"] != stored, "the seed stores this chain root first"
    _, cert_texts = split_key_and_certs(files["pem-chain"])[1:]
    assert len(cert_texts) == 3
    # Already leaf first: byte for byte as stored.
    files, _ = node.mount(objects("objectName: pem-self\nobjectType: secret"))
    assert files["pem-self"] == node.secrets.get_secret("pem-self").value.encode()


@pytest.mark.parametrize("name", ["cert1", "cert2-pfx"])
def test_pfx_formats(node, name):
    files, _ = node.mount(objects(
        f"objectName: {name}\nobjectType: secret\nobjectFormat: pfx\nobjectAlias: b64",
        f"objectName: {name}\nobjectType: secret\nobjectFormat: pfx\nobjectEncoding: base64\nobjectAlias: bin",
    ))
    value = node.secrets.get_secret(name).value
    assert files["b64"] == value.encode()
    assert files["bin"] == base64.b64decode(value)
    key, cert, extra = pkcs12.load_key_and_certificates(files["bin"], None)
    assert key is not None and cert is not None


def test_cert_key_files_side_by_side(node):
    files, _ = node.mount(objects(
        "objectName: tls-cert\nobjectType: secret\nobjectAlias: tls\ncertKeyFiles: \"true\"",
        "objectName: pem-chain\nobjectType: secret\ncertKeyFiles: \"true\"",
    ))
    for alias, name in [("tls", "tls-cert"), ("pem-chain", "pem-chain")]:
        key, chain = check_cert_secret_pem(node, name, files[alias])
        assert files[f"{alias}.crt"] == chain
        assert same_private_key(serialization.load_pem_private_key(files[f"{alias}.key"], None), key)
        assert files[f"{alias}.key"].startswith(b"-----BEGIN PRIVATE KEY-----\n")


def _history(props):
    enabled = [p for p in props if p.enabled is not False]
    return sorted(enabled, key=lambda p: p.created_on, reverse=True)


def test_version_history(node):
    files, versions = node.mount(objects(
        "objectName: rotated\nobjectType: secret\nobjectVersionHistory: 3",
        "objectName: keyhist\nobjectType: key\nobjectAlias: k\nobjectVersionHistory: 5",
        "objectName: cert1\nobjectType: cert\nobjectVersionHistory: 2",
        "objectName: cert1\nobjectType: secret\nobjectAlias: cert1-secret\nobjectVersionHistory: 2",
    ))
    hist = _history(node.secrets.list_properties_of_secret_versions("rotated"))
    for i in range(3):
        assert files[f"rotated/{i}"] == node.secrets.get_secret("rotated", hist[i].version).value.encode()
        assert versions[f"secret/rotated/{i}"] == hist[i].version
    assert "rotated/3" not in files
    khist = _history(node.keys.list_properties_of_key_versions("keyhist"))
    assert len(khist) == 3
    for i in range(3):
        assert files[f"k/{i}"] == public_key_pem(node.keys.get_key("keyhist", khist[i].version).key)
        assert versions[f"key/keyhist/{i}"] == khist[i].version
    assert "k/3" not in files and "k/4" not in files
    chist = _history(node.certs.list_properties_of_certificate_versions("cert1"))
    for i in range(2):
        cer = node.certs.get_certificate_version("cert1", chist[i].version).cer
        assert files[f"cert1/{i}"] == x509.load_der_x509_certificate(bytes(cer)).public_bytes(PEM)
        check_cert_secret_pem(node, "cert1", files[f"cert1-secret/{i}"], chist[i].version)
    assert files["cert1/0"] != files["cert1/1"]


def test_pinned_version_and_history_from_it(node):
    hist = _history(node.secrets.list_properties_of_secret_versions("rotated"))
    files, versions = node.mount(objects(
        f"objectName: rotated\nobjectType: secret\nobjectVersion: {hist[1].version}\nobjectVersionHistory: 2",
        f"objectName: secret1\nobjectType: secret\nobjectVersion: {node.secrets.get_secret('secret1').properties.version}",
    ))
    assert files["rotated/0"] == b"r2" and files["rotated/1"] == b"r1"
    assert versions["secret/rotated/0"] == hist[1].version
    assert files["secret1"] == b"s1-current"


def test_workload_identity_mode(node):
    token = subprocess.run(
        [node.bin, "mock-vault", "--tls-dir", node.tls_dir, "mint-token", "--namespace", "default", "--service-account", "app"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    tokens = json.dumps({"api://AzureADTokenExchange": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}})
    files, _ = node.mount(
        objects("objectName: key2\nobjectType: key", "objectName: cert1\nobjectType: secret"),
        {"clientID": APP_A, "csi.storage.k8s.io/serviceAccount.tokens": tokens},
        sp=False,
    )
    assert files["key2"] == public_key_pem(node.keys.get_key("key2").key)
    check_cert_secret_pem(node, "cert1", files["cert1"])


@pytest.mark.parametrize("name,words", [
    ("expired", ["expired", "attributes.exp"]),
    ("notyet", ["not valid before", "attributes.nbf"]),
    ("disabled", ["disabled"]),
])
def test_invalid_objects_are_refused(node, name, words):
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        node.mount(objects(f"objectName: {name}\nobjectType: secret"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for w in words:
        assert w in e.value.details(), e.value.details()


@pytest.mark.parametrize("extra,field", [
    ({"usePodIdentity": "true"}, "usePodIdentity"),
    ({"useVMManagedIdentity": "true"}, "useVMManagedIdentity"),
    ({"clientID": APP_A}, "clientID"),
    ({"cloudName": "AzureGermanCloud"}, "cloudName"),
])
def test_refusals_name_the_field(node, extra, field):
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        node.mount(objects("objectName: secret1\nobjectType: secret"), extra)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()
    assert APP_A_SECRET not in e.value.details()


def test_custom_cloud_env_file(node):
    env = pathlib.Path(node.cloud_dir) / "myCustomEnvironmentFile.json"
    env.write_text(json.dumps({
        "name": "AzureStackCloud",
        "activeDirectoryEndpoint": node.url + "/",
        "keyVaultDNSSuffix": node.suffix,
        "resourceManagerEndpoint": "https://management.stack.invalid/",
    }))
    files, _ = node.mount(
        objects("objectName: secret1\nobjectType: secret"),
        {"cloudName": "AzureStackCloud", "cloudEnvFileName": str(env)},
    )
    assert files["secret1"] == b"s1-current"


# ---- the Azure provider's documented examples (parameters as documented; vault "kvname") ----


def test_doc_example_secrets(node):
    files, _ = node.mount(objects(
        "objectName: secret1\nobjectType: secret\nobjectVersion: \"\"",
        "objectName: secret2\nobjectType: secret\nobjectVersion: \"\"\nobjectAlias: \"SECRET_ALIAS\"",
        "objectName: secret3\nobjectType: secret\nobjectVersion: \"\"\nobjectEncoding: \"base64\"",
    ), {"usePodIdentity": "false", "cloudName": ""})
    assert files == {"secret1": b"s1-current", "SECRET_ALIAS": b"s2", "secret3": bytes([0, 1, 2, 255])}


def test_doc_example_keys(node):
    files, _ = node.mount(objects(
        "objectName: key1\nobjectType: key\nobjectVersion: \"\"",
        "objectName: key2\nobjectType: key\nobjectVersion: \"\"\nobjectAlias: \"KEY_ALIAS\"",
    ), {"usePodIdentity": "false", "cloudName": ""})
    assert files["key1"] == public_key_pem(node.keys.get_key("key1").key)
    assert files["KEY_ALIAS"] == public_key_pem(node.keys.get_key("key2").key)


def test_doc_example_certs(node):
    files, _ = node.mount(objects(
        "objectName: cert1\nobjectType: cert\nobjectVersion: \"\"",
        "objectName: cert1\nobjectAlias: cert1-pub-key\nobjectType: key\nobjectVersion: \"\"",
        "objectName: cert1\nobjectAlias: cert1-secret\nobjectType: secret\nobjectVersion: \"\"",
        "objectName: cert2-pfx\nobjectAlias: cert2-secret-pfx\nobjectType: secret\nobjectVersion: \"\"\nobjectFormat: pfx",
        "objectName: cert2-pfx\nobjectAlias: cert2-secret-pfx-binary\nobjectType: secret\nobjectVersion: \"\"\nobjectFormat: pfx\nobjectEncoding: base64",
    ), {"usePodIdentity": "false", "useVMManagedIdentity": "false", "userAssignedIdentityID": "", "tenantId": TENANT})
    cert = x509.load_der_x509_certificate(bytes(node.certs.get_certificate("cert1").cer))
    assert files["cert1"] == cert.public_bytes(PEM)
    assert files["cert1-pub-key"] == cert.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert files["cert1-pub-key"] == public_key_pem(node.keys.get_key("cert1").key)
    check_cert_secret_pem(node, "cert1", files["cert1-secret"])
    pfx = node.secrets.get_secret("cert2-pfx").value
    assert files["cert2-secret-pfx"] == pfx.encode()
    assert files["cert2-secret-pfx-binary"] == base64.b64decode(pfx)


def test_doc_example_service_principal_and_tls(node):
    files, _ = node.mount(objects(
        "objectName: secret1\nobjectType: secret\nobjectVersion: \"\"",
        "objectName: key1\nobjectType: key\nobjectVersion: \"\"",
        "objectName: tls-cert\nobjectType: secret",
    ), {"usePodIdentity": "false", "cloudName": ""})
    assert files["secret1"] == b"s1-current"
    assert files["key1"] == public_key_pem(node.keys.get_key("key1").key)
    check_cert_secret_pem(node, "tls-cert", files["tls-cert"])


def test_doc_example_sync_multiple_versions(node):
    # Documented with usePodIdentity "true", which kvmount refuses (aad-pod-identity is
    # retired): the same objects with a service principal.
    sv = node.secrets.get_secret("rotated").properties.version
    kv = node.keys.get_key("keyhist").properties.version
    files, versions = node.mount(objects(
        f"objectName: rotated\nobjectType: secret\nobjectAlias: secretalias\nobjectVersion: {sv}\nobjectVersionHistory: 5",
        f"objectName: keyhist\nobjectType: key\nobjectVersion: {kv}\nobjectVersionHistory: 5",
    ))
    assert [files[f"secretalias/{i}"] for i in range(4)] == [b"r3", b"r2", b"r1", b"r0"]
    assert "secretalias/4" not in files
    assert sorted(k for k in files if k.startswith("keyhist/")) == ["keyhist/0", "keyhist/1", "keyhist/2"]
    assert versions["secret/rotated/0"] == sv


def test_history_from_a_missing_version_is_not_found(node):
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        node.mount(objects("objectName: rotated\nobjectType: secret\nobjectVersion: 0123456789abcdef0123456789abcdef\nobjectVersionHistory: 2"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "objects[0].objectVersion" in e.value.details()
