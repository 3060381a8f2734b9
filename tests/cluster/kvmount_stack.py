"""kvmount on the real cluster, as plain functions: what the cluster tests (conftest.py,
test_chart.py) and the pod-start benchmark (bench/podstart.py) both set up.

    env = install_env()                              # the cluster's parts (install.sh)
    c = cluster.Cluster.start(env)
    proc, vault = start_mock_vault(c, workdir, seed) # the mock vault in the cluster's namespace
    images = import_images(c)                        # kvmount's two images, imported
    helm = Helm(c)                                   # helm against the cluster
    install_chart(c, helm, vault, images, state_dir, workdir, app_namespaces=[...])

Errors are exceptions: `NotBuilt` when a binary or image this needs does not exist (the
fixtures skip), `StackError` otherwise (the fixtures fail)."""

import json
import os
import re
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if os.path.join(ROOT, "tests", "python") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))  # kvmount_support

RELEASE = "kvmount"
RELEASE_NS = "kvmount-system"
CHART_DIR = os.path.join(ROOT, "deploy", "helm", "kvmount")
DRIVER = "secrets.kvmount.io"
CA_CONFIGMAP = "kvmount-vault-ca"  # the mock vault's CA, in the release and app namespaces
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


class StackError(Exception):
    pass


class NotBuilt(StackError):
    """A binary or image is not there (and is not built here)."""


def install_env():
    """The VAR=path lines of tests/cluster/install.sh (cached per machine; seconds when cached),
    or the KVMOUNT_CLUSTER_* variables when tests/run.sh already exported them."""
    if all(k in os.environ for k in ("KVMOUNT_CLUSTER_KUBE", "KVMOUNT_CLUSTER_ETCD", "KVMOUNT_CLUSTER_DEBIAN")):
        return {k: v for k, v in os.environ.items() if k.startswith("KVMOUNT_CLUSTER_")}
    out = subprocess.run([os.path.join(HERE, "install.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def provider_binary():
    """The kvmount-provider that runs the mock vault: KVMOUNT_PROVIDER_BIN, else
    target/debug/kvmount-provider."""
    binary = os.environ.get("KVMOUNT_PROVIDER_BIN", os.path.join(ROOT, "target", "debug", "kvmount-provider"))
    if not os.path.exists(binary):
        raise NotBuilt(f"{binary} is not built (cargo build --workspace --bins)")
    return binary


def start_mock_vault(cluster, workdir, seed):
    """kvmount's mock vault (seed YAML text `seed`) on port 8443 of every address of the
    cluster's network namespace: hostNetwork pods reach it at 127.0.0.1:8443, every pod at the
    node IP through the CNI bridge's gateway (its certificate covers the node IP too). Returns
    (the process, its ready line's fields (url, ca, tenant, ...) plus `tls_dir` and `port`);
    stop the process with `.stop()`."""
    from kvmount_support import Proc

    binary = provider_binary()
    os.makedirs(workdir, exist_ok=True)
    seed_file = os.path.join(workdir, "seed.yaml")
    with open(seed_file, "w") as f:
        f.write(seed)
    tls = os.path.join(workdir, "tls")
    proc = Proc(cluster.ns([binary, "mock-vault", "--listen", "0.0.0.0:8443", "--seed", seed_file,
                            "--tls-dir", tls, "--tls-san", cluster.node_ip]))
    line = proc.ready_line(re.compile(r"^kvmount mock vault ready (.*)$"))
    fields = dict(kv.split("=", 1) for kv in line.group(1).split())
    fields["tls_dir"] = tls
    fields["port"] = fields["url"].rsplit(":", 1)[1].strip("/")
    return proc, fields


def _host_arch():
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _archive_tags(path):
    """The RepoTags of a docker-archive tarball (its manifest.json)."""
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    return [t for entry in manifest for t in entry.get("RepoTags") or []]


def import_images(cluster):
    """kvmount's two images imported into containerd, as
    {"provider": "<registry>/<repo>/kvmount-provider:<tag>", "sidecar": ..., "archives": [...]}.
    From KVMOUNT_IMAGE_DIR (the --out directory of an earlier `deploy/images/build.sh`: its
    images.json names the docker-archive of each image for this machine's architecture), or
    KVMOUNT_IMAGE_ARCHIVES (docker-archive paths, space-separated), or else built now with
    `deploy/images/build.sh --arch <this machine's> --out target/images` (its cargo builds are
    cached per machine, outside the clone). Names come from the archives' own RepoTags."""
    arch = _host_arch()
    archives = os.environ.get("KVMOUNT_IMAGE_ARCHIVES", "").split()
    image_dir = os.environ.get("KVMOUNT_IMAGE_DIR")
    if not archives:
        if not image_dir:
            build = os.path.join(ROOT, "deploy", "images", "build.sh")
            if not os.path.exists(build):
                raise NotBuilt("deploy/images/build.sh does not exist yet")
            image_dir = os.path.join(ROOT, "target", "images")
            subprocess.run([build, "--arch", arch, "--out", image_dir], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(os.path.join(image_dir, "images.json")) as f:
            built = json.load(f)
        # build.sh resolves a relative --out from the clone's root; the archives are in docker/.
        archives = [a if os.path.isabs(a) else os.path.join(image_dir, "docker", os.path.basename(a))
                    for a in (entry["platforms"][arch]["docker_archive"] for entry in built["images"].values())]
    names = {}
    for a in archives:
        cluster.import_image(a)
        for tag in _archive_tags(a):
            image = tag.rsplit(":", 1)[0].rsplit("/", 1)[-1]
            if image in ("kvmount-provider", "kvmount-sidecar"):
                names[image.split("-", 1)[1]] = tag
    missing = {"provider", "sidecar"} - set(names)
    if missing:
        raise StackError(f"no kvmount-{'/'.join(sorted(missing))} image among {archives}")
    return dict(names, archives=archives)


class Helm:
    """helm (tests/deploy/install-helm.sh's binary, cached per machine) against the cluster, run
    in its network namespace: `helm(*args)` -> stdout; raises StackError on a non-zero exit
    unless `check=False`."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.binary = subprocess.run([os.path.join(ROOT, "tests", "deploy", "install-helm.sh")], check=True,
                                     stdout=subprocess.PIPE, text=True).stdout.strip()

    def __call__(self, *args, check=True):
        p = subprocess.run(self.cluster.ns([self.binary, f"--kubeconfig={self.cluster.kubeconfig}", *args]),
                           capture_output=True, text=True, timeout=300)
        if check and p.returncode != 0:
            raise StackError(f"helm {' '.join(args)}: exit {p.returncode}: {p.stderr}")
        return p.stdout


def wait_for(what, check, timeout, every=0.5):
    """Polls check() -> (done, value) until done; returns the value, or raises StackError with
    the last one."""
    deadline = time.monotonic() + timeout
    while True:
        ok, last = check()
        if ok:
            return last
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not within {timeout}s; last: {last!r}"[:4000])
        time.sleep(every)


def wait_csinode_lists(cluster, driver, timeout):
    """Waits until the node's CSINode lists `driver` (the kubelet registered it); returns the
    drivers it lists last, for the caller's assertion and message."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.kubectl("get", "csinode", cluster.node_name, "-o", "json", check=False).stdout
        drivers = [d["name"] for d in json.loads(out or "{}").get("spec", {}).get("drivers") or []]
        if driver in drivers or time.monotonic() > deadline:
            return drivers
        time.sleep(0.3)


def split_image(ref):
    """registry, repository, tag of `registry/repo/name:tag`."""
    name, tag = ref.rsplit(":", 1)
    registry, repository = name.split("/", 1)
    return registry, repository, tag


def _daemon_values(cluster, mock_vault, images, provider=None):
    """What every install here shares: kvmount's imported images (never pulled), and the node
    daemon pointed at the mock vault at the node IP (Key Vault `<name>.vault.localhost` and the
    Entra authority) trusting its CA through the CA_CONFIGMAP ConfigMap. `provider`: more
    `provider.*` values."""
    vault = f"{cluster.node_ip}:{mock_vault['port']}"
    registry, provider_repo, tag = split_image(images["provider"])
    sidecar_registry, sidecar_repo, sidecar_tag = split_image(images["sidecar"])
    if (registry, tag) != (sidecar_registry, sidecar_tag):  # the chart has one registry and tag
        raise StackError(f"the images differ in registry or tag: {images}")
    return {
        "image": {"registry": registry, "tag": tag, "pullPolicy": "Never",
                  "provider": {"repository": provider_repo}, "sidecar": {"repository": sidecar_repo}},
        "provider": {
            "keyvaultDnsSuffix": "vault.localhost",
            "authorityHost": f"https://{vault}",
            "resolve": [f"*.vault.localhost={vault}"],
            "caConfigMap": CA_CONFIGMAP,
            "logFormat": "text",
            **(provider or {}),
        },
    }


def chart_values(cluster, mock_vault, images, state_dir, provider=None):
    """The chart's values for kvmount as the cluster runs it: standalone mode with the webhook
    (the chart's own TLS, one replica), the daemon and the injected agents pointed at the mock
    vault (_daemon_values), the kubelet's root dir and a tmpfs state dir on the host.
    `provider`: more `provider.*` values."""
    vault = f"{cluster.node_ip}:{mock_vault['port']}"
    return {
        "mode": "standalone",
        **_daemon_values(cluster, mock_vault, images, provider),
        "standalone": {"kubeletDir": cluster.kubelet_root, "stateHostDir": state_dir},
        "webhook": {
            "enabled": True,
            "replicas": 1,
            "tls": {"mode": "helm"},
            "agentArgs": ["--keyvault-dns-suffix=vault.localhost", f"--authority-host=https://{vault}",
                          f"--resolve=*.vault.localhost={vault}"],
            "agentCAConfigMap": CA_CONFIGMAP,
            "logFormat": "text",
        },
    }


def provider_mode_values(cluster, mock_vault, images, provider=None):
    """The chart's values for provider mode (next to the upstream driver), the daemon pointed
    at the mock vault (_daemon_values). `provider`: more `provider.*` values (socketName,
    providersDir, ...)."""
    return {"mode": "provider", **_daemon_values(cluster, mock_vault, images, provider)}


def create_namespaces(cluster, mock_vault, namespaces):
    """Each namespace labelled privileged (the node DaemonSet uses hostPath volumes and a
    privileged container, README), with the mock vault's CA as ConfigMap CA_CONFIGMAP
    (provider.caConfigMap in the release namespace, webhook.agentCAConfigMap wherever pods are
    injected)."""
    for ns in namespaces:
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")
        cluster.kubectl("create", "configmap", CA_CONFIGMAP, "-n", ns, f"--from-file=ca.crt={mock_vault['ca']}")


def install_chart(helm, values, workdir, namespace=RELEASE_NS):
    """`helm install --wait` of the chart with `values` (written to workdir/values.json) in
    `namespace`, which must exist; returns (the NOTES, the values file)."""
    values_file = os.path.join(workdir, "values.json")  # JSON is YAML
    with open(values_file, "w") as f:
        json.dump(values, f, indent=1)
    notes = helm("install", RELEASE, CHART_DIR, "-n", namespace, "-f", values_file, "--wait", "--timeout=3m")
    return notes, values_file


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')


def metrics_of(cluster, ip, port):
    """A node daemon's /metrics, fetched from its pod IP inside the cluster's network namespace
    (the image has no shell for kubectl exec): [(name, {label: value}, value)]."""
    text = subprocess.run(cluster.ns(["curl", "-sf", "--max-time", "10", f"http://{ip}:{port}/metrics"]),
                          check=True, capture_output=True, text=True).stdout
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def metric(samples, name, **labels):
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


def vault_stats(cluster, mock_vault, reset=False):
    """The mock vault's request counts (GET /_mock/stats, from inside the cluster's network
    namespace): {"total", "entries": [{vault, route, object, status, count}], "connections"}.
    With `reset`, the counts are cleared instead (DELETE /_mock/stats) and None returned."""
    out = subprocess.run(cluster.ns(["curl", "-sf", "--max-time", "10", "--cacert", mock_vault["ca"],
                                     *(["-X", "DELETE"] if reset else []),
                                     f"https://127.0.0.1:{mock_vault['port']}/_mock/stats"]),
                         check=True, capture_output=True, text=True).stdout
    return None if reset else json.loads(out)


def stats_count(stats, route=None, obj=None, status=None):
    """The sum of the mock vault's counters that match every filter given."""
    return sum(e["count"] for e in stats["entries"]
               if (route is None or e["route"] == route) and (obj is None or e["object"] == obj)
               and (status is None or e["status"] == status))
