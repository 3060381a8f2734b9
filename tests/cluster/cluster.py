"""A real single-node Kubernetes cluster for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, containerd and the kubelet (v1.34.4), built by tests/cluster/install.sh, run as
processes on this machine in a private network namespace. Python stdlib only.

    c = Cluster.start(env)        # env: the VAR=path lines install.sh prints
    c.kubectl("get", "nodes")
    c.stop()                      # always; also `python3 tests/cluster/cluster.py down RUN_DIR`

Layout of one run (everything under `run_dir`, a fresh directory per run):

    netns               the network namespace (bind mount of `unshare --net=FILE`); the node IP
                        NODE_IP sits on bridge `node0` inside it, pods on the CNI bridge `cni0`
    pki/                CA, apiserver serving cert, client certs, service-account signing key
                        (`sa.key`, `sa.pub`: the key the mock vault trusts for workload identity)
    *.kubeconfig        one per component; `admin.kubeconfig` for the tests
    etcd/ containerd/ cni/ kubelet/ (the kubelet's --root-dir) logs/ (one file per process)
    state.json          what teardown needs without this process: pids, cgroup root, the host
                        paths that existed before the run

Facts this relies on (../shared/reference/real-cluster.md): the kubelet refuses a loopback node
IP, hence the namespace with the IP on a bridge (no dummy devices here); `nsenter --net` and
never `ip netns exec` (which also makes a mount namespace, hiding CSI mounts from containerd);
no kube-proxy, so the apiserver listens on 443 on every address of the namespace and the
`kubernetes` Service IP is an address there too, so pods using the in-cluster config reach it;
the apiserver reaches webhook Services through their endpoints (--enable-aggregator-routing);
cgroupfs (no systemd), cgroups v1.

Teardown (`stop`, `teardown(run_dir)`) works from state.json and /proc alone, so it also runs
after the test process died: it kills by PID every process the run started, their children,
containerd's shims and every process in the run's cgroups or network namespace; lazily unmounts
everything under the run dir, deepest first; removes the pod network namespaces containerd made
in /run/netns; removes the cgroups (deepest first) and the host paths kubelet and containerd
write outside any configured path; then the run dir.
"""

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

KUBE_VERSION = "v1.34.4"
NODE_NAME = "kvmount-node"
NODE_IP = "10.77.0.1"
POD_SUBNET = "10.88.0.0/24"
SERVICE_RANGE = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: an address of the namespace, see above
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
BUSYBOX_IMAGE = "kvmount.test/busybox:1"
PAUSE_IMAGE = "kvmount.test/pause:1"

# Written by kubelet 1.34 and containerd 1.6 whatever their configured paths (the reference),
# and the CNI cache. Each is removed after the run if it did not exist before; if it did, only
# the entries the run added.
HOST_PATHS = [
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/containerd/fifo",
    "/run/containerd/s",
    "/run/containerd/runc",
    "/run/containerd",
]


def log(msg):
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


class ClusterError(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Certificates (openssl)


def make_pki(pki):
    """A CA (EC P-256), the apiserver's serving cert, the kubelet's serving cert, client certs
    for every component, and the service-account signing key (RSA 2048, as clusters use). One
    openssl call per certificate (key, request and signature at once), all in parallel after the
    CA: about 0.5 s."""
    os.makedirs(pki, exist_ok=True)
    # A config with nothing in it: the extensions are exactly the -addext ones.
    with open(os.path.join(pki, "openssl.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name = dn\n[dn]\n")
    req = ["openssl", "req", "-config", "openssl.cnf", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-days", "2"]

    def run_all(cmds):
        procs = [subprocess.Popen(c, cwd=pki, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
        for c, p in zip(cmds, procs):
            _, err = p.communicate()
            if p.returncode != 0:
                raise ClusterError(f"{' '.join(c)}: {err.decode(errors='replace')}")

    run_all([req + ["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=kvmount-test-ca",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]])

    def cert(name, subj, usage, sans=None):
        c = req + ["-keyout", name + ".key", "-out", name + ".crt", "-subj", subj, "-CA", "ca.crt", "-CAkey", "ca.key",
                   "-addext", "basicConstraints=CA:FALSE", "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
                   "-addext", "extendedKeyUsage=" + usage]
        return c + (["-addext", "subjectAltName=" + ",".join(sans)] if sans else [])

    run_all([
        cert("apiserver", "/CN=kube-apiserver", "serverAuth", [
            f"IP:{NODE_IP}", f"IP:{SERVICE_IP}", "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]),
        cert("kubelet-serving", f"/CN={NODE_NAME}", "serverAuth", [f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"]),
        cert("admin", "/O=system:masters/CN=kubernetes-admin", "clientAuth"),
        cert("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth"),
        cert("controller-manager", "/CN=system:kube-controller-manager", "clientAuth"),
        cert("scheduler", "/CN=system:kube-scheduler", "clientAuth"),
        cert("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}", "clientAuth"),
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"],
    ])
    run_all([["openssl", "pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]])


def kubeconfig(path, pki, user, server):
    with open(path, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: kvmount
  cluster: {{certificate-authority: {pki}/ca.crt, server: "{server}"}}
users:
- name: {user}
  user: {{client-certificate: {pki}/{user}.crt, client-key: {pki}/{user}.key}}
contexts:
- name: kvmount
  context: {{cluster: kvmount, user: {user}}}
current-context: kvmount
""")


# ------------------------------------------------------------------------------------------
# Images: docker-archive tarballs built without Docker


def _tar_bytes(add):
    """A reproducible tar (sorted names, mtime 0, root-owned) of what `add(tar)` puts in."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar)
    return buf.getvalue()


def _entry(tar, name, data=None, mode=0o644, linkname=None, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = mode
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = linkname
        tar.addfile(info)
    elif kind == tarfile.DIRTYPE:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def docker_archive(path, images):
    """Writes a docker-archive tarball with one or more images, each `(tag, layer_bytes, config)`
    (config: the image config's `config` object: Entrypoint, Cmd, User, Env...)."""
    files = {}
    manifest = []
    for tag, layer, config in images:
        diff = "sha256:" + hashlib.sha256(layer).hexdigest()
        layer_name = diff[7:] + "/layer.tar"
        files[layer_name] = layer
        cfg = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff]}, "history": [{"created": "1970-01-01T00:00:00Z"}],
        }, sort_keys=True).encode()
        cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
        files[cfg_name] = cfg
        manifest.append({"Config": cfg_name, "RepoTags": [tag], "Layers": [layer_name]})
    files["manifest.json"] = json.dumps(manifest).encode()

    def add(tar):
        for name in sorted(files):
            _entry(tar, name, files[name])

    with open(path + ".tmp", "wb") as f:
        f.write(_tar_bytes(add))
    os.replace(path + ".tmp", path)


def busybox_images(busybox, path):
    """`kvmount.test/busybox:1` (static busybox with its applets linked in /bin, a shell as the
    command) and the sandbox image `kvmount.test/pause:1` (same layer; sleeps until killed,
    which is all a pod sandbox's container does), both in one docker-archive at `path`."""
    with open(busybox, "rb") as f:
        binary = f.read()
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()

    def add(tar):
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "var", "run"):
            _entry(tar, d + "/", mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        _entry(tar, "bin/busybox", binary, mode=0o755)
        for a in sorted(set(applets) - {"busybox"}):
            _entry(tar, "bin/" + a, linkname="busybox", kind=tarfile.SYMTYPE)
        _entry(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        _entry(tar, "etc/group", b"root:x:0:\nnobody:x:65534:\n")

    layer = _tar_bytes(add)
    env = ["PATH=/bin"]
    docker_archive(path, [
        (BUSYBOX_IMAGE, layer, {"Env": env, "Cmd": ["/bin/sh"]}),
        (PAUSE_IMAGE, layer, {"Env": env, "Entrypoint": ["/bin/sleep", "2147483647"]}),
    ])


# ------------------------------------------------------------------------------------------
# Processes, mounts, cgroups


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError:
        return None


def _alive(pid):
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children():
    kids = {}
    for pid in _pids():
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(pid)
    return kids


def _cgroup_dirs(cgroup_root):
    """Every v1 hierarchy's directory for the run's cgroup root."""
    out = []
    for h in sorted(os.listdir("/sys/fs/cgroup")):
        base = os.path.join("/sys/fs/cgroup", h)
        if os.path.isdir(base) and not os.path.islink(base):
            out.append(os.path.join(base, cgroup_root.strip("/")))
    return out


def _run_processes(run_dir, state):
    """Every process of the run: recorded pids, anything whose command line names the run dir
    (containerd's shims pass its socket), every process in the run's cgroups (pods) or its
    network namespace (hostNetwork pods, the test's own daemons there), and their children."""
    me = os.getpid()
    found = {p for p in state.get("pids", {}).values() if _alive(p)}
    netns = os.path.join(run_dir, "netns")
    ns_ino = None
    try:
        if any(m == netns for m in _mounts_under(run_dir)):
            ns_ino = os.stat(netns).st_ino
    except OSError:
        pass
    needle = run_dir.encode()
    for pid in _pids():
        if pid == me:
            continue
        cmd = _read(f"/proc/{pid}/cmdline", binary=True)
        if cmd and needle in cmd:
            found.add(pid)
            continue
        if ns_ino is not None:
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == ns_ino:
                    found.add(pid)
            except OSError:
                pass
    if state.get("cgroup_root"):
        for d in _cgroup_dirs(state["cgroup_root"]):
            for dirpath, _, files in os.walk(d):
                if "cgroup.procs" in files:
                    for line in (_read(os.path.join(dirpath, "cgroup.procs")) or "").split():
                        found.add(int(line))
    kids = _children()
    todo = list(found)
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in found:
                found.add(k)
                todo.append(k)
    found.discard(me)
    return found


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts_under(*dirs):
    out = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        m = _unescape(line.split()[4])
        if any(m == d or m.startswith(d.rstrip("/") + "/") for d in dirs):
            out.append(m)
    return out


def _umount_all(dirs):
    for _ in range(5):
        mounts = _mounts_under(*dirs)
        if not mounts:
            return True
        for m in sorted(set(mounts), key=lambda p: (p.count("/"), p), reverse=True):
            subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return not _mounts_under(*dirs)


def _rmdir_tree(d):
    """rmdir a cgroup directory tree, deepest first (cgroup dirs have only pseudo-files)."""
    if not os.path.isdir(d):
        return
    for dirpath, dirnames, _ in sorted(os.walk(d), key=lambda t: t[0].count("/"), reverse=True):
        for _ in range(20):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def _snapshot_host_paths():
    return {p: (sorted(os.listdir(p)) if os.path.isdir(p) else None) for p in HOST_PATHS}


def teardown(run_dir):
    """Removes everything of the run at `run_dir` (see the module doc). Idempotent; returns a
    list of what could not be removed (empty when clean)."""
    run_dir = os.path.abspath(run_dir)
    state = json.loads(_read(os.path.join(run_dir, "state.json")) or "{}")
    problems = []
    # 1. Processes: the kubelet first (it would restart containers), then everything else.
    kubelet = state.get("pids", {}).get("kubelet")
    if kubelet and _alive(kubelet):
        try:
            os.kill(kubelet, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while True:
        procs = _run_processes(run_dir, state)
        if not procs:
            break
        for p in procs:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            problems.append(f"processes still alive: {sorted(procs)}")
            break
        time.sleep(0.1)
    # 2. Mounts under the run dir (the kubelet root and containerd's root and state are there,
    # and the network namespace's bind mount, which ends the namespace), deepest first.
    if not _umount_all([run_dir]):
        problems.append(f"mounts left: {_mounts_under(run_dir)}")
    # 3. Pod network namespaces containerd 1.6 made in /run/netns.
    before_netns = set(state.get("netns_before", []))
    if os.path.isdir("/run/netns") and "netns_before" in state:
        for n in os.listdir("/run/netns"):
            if n.startswith("cni-") and n not in before_netns:
                p = os.path.join("/run/netns", n)
                _umount_all([p])
                try:
                    os.unlink(p)
                except OSError as e:
                    problems.append(f"{p}: {e}")
    # 4. cgroups: the run's own root, and a top-level kubepods the run created.
    if state.get("cgroup_root"):
        for d in _cgroup_dirs(state["cgroup_root"]):
            _rmdir_tree(d)
            if os.path.isdir(d):
                problems.append(f"cgroup left: {d}")
        if not state.get("kubepods_before", True):
            for d in _cgroup_dirs("/kubepods"):
                _rmdir_tree(d)
    # 5. Host paths written outside the configured ones.
    before = state.get("host_paths")
    if before is not None:
        for p in HOST_PATHS:  # deepest listed first
            if not os.path.lexists(p):
                continue
            if before.get(p) is None:
                _umount_all([p])
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.isdir(p):
                for e in set(os.listdir(p)) - set(before[p]):
                    q = os.path.join(p, e)
                    if q in HOST_PATHS:
                        continue
                    _umount_all([q])
                    if os.path.isdir(q) and not os.path.islink(q):
                        shutil.rmtree(q, ignore_errors=True)
                    else:
                        try:
                            os.unlink(q)
                        except OSError:
                            pass
            if os.path.lexists(p) and before.get(p) is None:
                problems.append(f"host path left: {p}")
    # 6. The run dir, only once nothing is mounted below it (rm -rf would descend into a mount).
    if not _mounts_under(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    return problems


# The node's host paths (/var/lib/kubelet, /run/containerd, the kubepods cgroups...) are fixed,
# so one cluster runs on a machine at a time: a second run (another clone's test command, a
# benchmark) waits for this lock. The kernel drops it when its holder dies, however it dies.
MACHINE_LOCK = "/run/kvmount-cluster.lock"


def _machine_lock():
    f = open(MACHINE_LOCK, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another run's cluster holds {MACHINE_LOCK}; waiting for it to finish")
        t0 = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        log(f"waited {time.monotonic() - t0:.0f}s for {MACHINE_LOCK}")
    return f


# ------------------------------------------------------------------------------------------
# The cluster


class Cluster:
    def __init__(self, env, run_dir):
        self.env = env
        self.run_dir = run_dir
        self.kube = env["KVMOUNT_CLUSTER_KUBE"]
        self.debian = env["KVMOUNT_CLUSTER_DEBIAN"]
        self.etcd = env["KVMOUNT_CLUSTER_ETCD"]
        self.netns = os.path.join(run_dir, "netns")
        self.pki = os.path.join(run_dir, "pki")
        self.logs = os.path.join(run_dir, "logs")
        self.kubelet_root = os.path.join(run_dir, "kubelet")
        self.kubeconfig = os.path.join(run_dir, "admin.kubeconfig")
        self.containerd_sock = os.path.join(run_dir, "containerd", "containerd.sock")
        self.node_ip = NODE_IP
        self.node_name = NODE_NAME
        self.sa_issuer = SA_ISSUER
        self.sa_public_key = os.path.join(self.pki, "sa.pub")
        self.ca_cert = os.path.join(self.pki, "ca.crt")
        self.busybox_image = BUSYBOX_IMAGE
        self.cgroup_root = "/kvmount-" + os.path.basename(run_dir)
        self.state = {"pids": {}, "cgroup_root": self.cgroup_root}
        self.procs = {}
        self._lock = None
        self.timings = {}

    # --- helpers the tests use ---

    def ns(self, argv):
        """`argv` run inside the cluster's network namespace."""
        return ["nsenter", f"--net={self.netns}", *argv]

    def kubectl(self, *args, input=None, check=True, timeout=120):
        """kubectl with the admin kubeconfig, in the namespace; returns stdout. Fails with
        stderr on a non-zero exit when `check`."""
        p = subprocess.run(self.ns([os.path.join(self.kube, "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]),
                           input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout if check else p

    def apply(self, manifest):
        return self.kubectl("apply", "-f", "-", input=manifest if isinstance(manifest, str) else json.dumps(manifest))

    def import_image(self, tarball):
        """Loads a docker-archive (or OCI archive) tarball into containerd's k8s.io namespace, where
        the kubelet finds it (pods use `imagePullPolicy: Never` or IfNotPresent)."""
        p = subprocess.run([os.path.join(self.debian, "bin", "ctr"), "--address", self.containerd_sock,
                            "-n", "k8s.io", "images", "import", tarball], capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"ctr images import {tarball}: {p.stderr.strip()}")

    def ctr(self, *args):
        """`ctr -n k8s.io ARGS` against the cluster's containerd (the kubelet's images); returns stdout."""
        p = subprocess.run([os.path.join(self.debian, "bin", "ctr"), "--address", self.containerd_sock, "-n", "k8s.io", *args],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def log_of(self, name, tail=200):
        """The last `tail` lines of a component's log (kubelet, kube-apiserver, containerd, ...)."""
        text = _read(os.path.join(self.logs, name + ".log")) or ""
        return "\n".join(text.splitlines()[-tail:])

    def spawn(self, name, argv, env=None, netns=True):
        """Starts a process (in the namespace by default), logging to logs/NAME.log, recorded for
        teardown by PID."""
        out = open(os.path.join(self.logs, name + ".log"), "ab")
        p = subprocess.Popen(self.ns(argv) if netns else argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        out.close()
        self.procs[name] = p
        self.state["pids"][name] = p.pid
        self._save_state()
        return p

    def _save_state(self):
        with open(os.path.join(self.run_dir, "state.json.tmp"), "w") as f:
            json.dump(self.state, f)
        os.replace(os.path.join(self.run_dir, "state.json.tmp"), os.path.join(self.run_dir, "state.json"))

    def _wait(self, what, check, timeout, procs=()):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in procs:
                if self.procs[name].poll() is not None:
                    raise ClusterError(f"{name} exited ({self.procs[name].returncode}) while waiting for {what}:\n{self.log_of(name, 40)}")
            try:
                if check():
                    return
            except (ClusterError, subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout}s waiting for {what}")

    # --- start ---

    @classmethod
    def start(cls, env, parent=None):
        """A fresh run dir under `parent` (TMPDIR by default) and the whole cluster in it, the
        node Ready; tears down what it started if starting fails."""
        lock = _machine_lock()
        run_dir = tempfile.mkdtemp(prefix="kc-", dir=parent)  # short: socket paths in it have at most 107 bytes
        if len(run_dir) > 50:
            os.rmdir(run_dir)
            # <run dir>/kubelet/plugins_registry/secrets-store.csi.k8s.io-reg.sock must fit in 107 bytes
            raise ClusterError(f"the run dir {run_dir} is too long for the Unix sockets in it: use a shorter TMPDIR")
        c = cls(env, run_dir)
        c._lock = lock
        try:
            c._start()
        except BaseException:
            log(f"start failed; kubelet log:\n{c.log_of('kubelet', 30)}")
            c.stop()
            raise
        return c

    def stop(self):
        problems = teardown(self.run_dir)
        if problems:
            log("teardown left: " + "; ".join(problems))
        if self._lock is not None:
            self._lock.close()  # the next run may start
            self._lock = None
        return problems

    def _start(self):
        t0 = time.monotonic()
        run = self.run_dir
        os.makedirs(self.logs)
        self.state["host_paths"] = _snapshot_host_paths()
        self.state["netns_before"] = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        self.state["kubepods_before"] = os.path.isdir("/sys/fs/cgroup/memory/kubepods")
        self._save_state()

        # Network namespace, the node IP on a bridge (dummy devices do not exist here), and the
        # `kubernetes` Service IP as a local address (no kube-proxy).
        open(self.netns, "w").close()
        subprocess.run(["unshare", f"--net={self.netns}", "true"], check=True)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "node0", "type", "bridge"],
                    ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "node0"],
                    ["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "node0"],
                    ["ip", "link", "set", "node0", "up"],
                    ["ip", "route", "add", "default", "dev", "node0"]):
            subprocess.run(self.ns(cmd), check=True, capture_output=True)

        make_pki(self.pki)
        for user in ("admin", "controller-manager", "scheduler", "kubelet"):
            kubeconfig(os.path.join(run, user + ".kubeconfig"), self.pki, user, f"https://{NODE_IP}:443")
        pki = self.pki
        kube = self.kube

        # etcd
        self.spawn("etcd", [os.path.join(self.etcd, "etcd"), "--name", "kvmount", "--data-dir", os.path.join(run, "etcd"),
                            "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
                            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                            "--initial-cluster", "kvmount=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level", "warn"])

        # containerd (its own root, state and socket; the shims and runc from the same packages)
        self._start_containerd()

        # kube-apiserver: 443 on every address of the namespace, so the Service IP reaches it
        self.spawn("kube-apiserver", [
            os.path.join(kube, "kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", "--secure-port=443", f"--advertise-address={NODE_IP}",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt",
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--authorization-mode=Node,RBAC",
            "--enable-aggregator-routing=true",
            # logs, exec: the node's name does not resolve; its InternalIP is the node IP
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ])
        self._wait("the apiserver's /readyz", lambda: self.kubectl("get", "--raw", "/readyz", timeout=10).strip() == "ok",
                   90, procs=("etcd", "kube-apiserver"))
        self.timings["apiserver_ready"] = time.monotonic() - t0

        self.spawn("kube-controller-manager", [
            os.path.join(kube, "kube-controller-manager"),
            f"--kubeconfig={run}/controller-manager.kubeconfig",
            f"--authentication-kubeconfig={run}/controller-manager.kubeconfig",
            f"--authorization-kubeconfig={run}/controller-manager.kubeconfig",
            f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
            "--use-service-account-credentials=true",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--cluster-signing-cert-file={pki}/ca.crt", f"--cluster-signing-key-file={pki}/ca.key",
            "--v=1",
        ])
        self.spawn("kube-scheduler", [
            os.path.join(kube, "kube-scheduler"),
            f"--kubeconfig={run}/scheduler.kubeconfig",
            f"--authentication-kubeconfig={run}/scheduler.kubeconfig",
            f"--authorization-kubeconfig={run}/scheduler.kubeconfig",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1",
        ])
        self._start_kubelet()

        def node_ready():
            out = self.kubectl("get", "node", NODE_NAME, "-o",
                               "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}", timeout=10)
            return out.strip() == "True"

        self._wait("the node to be Ready", node_ready, 120, procs=("kubelet", "containerd", "kube-apiserver"))
        # Pods need the default service account and the root CA config map (controller-manager).
        self._wait("the default service account and kube-root-ca.crt",
                   lambda: self.kubectl("get", "serviceaccount/default", "configmap/kube-root-ca.crt", "-n", "default",
                                        "-o", "name", timeout=10).count("\n") == 2,
                   60, procs=("kube-controller-manager",))
        self.timings["ready"] = time.monotonic() - t0
        log(f"node {NODE_NAME} Ready in {self.timings['ready']:.1f}s (run dir {run})")

    def _start_containerd(self):
        run = self.run_dir
        d = os.path.join(run, "containerd")
        cni = os.path.join(run, "cni")
        os.makedirs(os.path.join(cni, "net.d"))
        with open(os.path.join(cni, "net.d", "10-kvmount.conflist"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": "kvmount", "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": os.path.join(cni, "ipam")}}]}, f)
        os.makedirs(d)
        bin_dir = os.path.join(self.debian, "bin")
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE, so nothing may lower its oom_score_adj below 0: the
  # kubelet's -998 for sandboxes made runc fail ("failed to update /proc/self/oom_score_adj:
  # Permission denied", seen as "can't get final child's PID from pipe: EOF"). containerd
  # clamps the adjustments to its own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{bin_dir}/runc"
        Root = "{d}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.debian}/cni"
    conf_dir = "{cni}/net.d"
""")
        env = dict(os.environ, PATH=bin_dir + ":" + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        self.spawn("containerd", [os.path.join(bin_dir, "containerd"), "--config", os.path.join(d, "config.toml")], env=env)
        ctr = [os.path.join(bin_dir, "ctr"), "--address", self.containerd_sock]
        self._wait("containerd", lambda: subprocess.run(ctr + ["version"], capture_output=True, timeout=5).returncode == 0,
                   30, procs=("containerd",))
        images = os.path.join(run, "images")
        os.makedirs(images)
        tar = os.path.join(images, "busybox.tar")
        busybox_images(os.path.join(bin_dir, "busybox"), tar)
        self.import_image(tar)

    def _start_kubelet(self):
        run = self.run_dir
        # The run's own cgroup root in every hierarchy, so its pods' cgroups are its own.
        for d in _cgroup_dirs(self.cgroup_root):
            os.makedirs(d, exist_ok=True)
        os.makedirs(self.kubelet_root)
        cfg = os.path.join(run, "kubelet.yaml")
        with open(cfg, "w") as f:
            json.dump({
                "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                "address": NODE_IP, "port": 10250, "readOnlyPort": 0, "healthzPort": 0,
                "tlsCertFile": f"{self.pki}/kubelet-serving.crt", "tlsPrivateKeyFile": f"{self.pki}/kubelet-serving.key",
                "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                                   "x509": {"clientCAFile": f"{self.pki}/ca.crt"}},
                "authorization": {"mode": "Webhook"},
                "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root,
                "containerRuntimeEndpoint": "unix://" + self.containerd_sock,
                "podLogsDir": os.path.join(run, "pod-logs"),
                "failSwapOn": False,
                "resolvConf": "/etc/resolv.conf",
                # Absolute disk thresholds: the machines this runs on share one disk with builds,
                # often above 99% full, where a percentage sets DiskPressure (pods evicted,
                # the node tainted) mid-run.
                "evictionHard": {"memory.available": "50Mi", "nodefs.available": "100Mi", "imagefs.available": "100Mi"},
                "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
                "serializeImagePulls": False,
                "syncFrequency": "10s",
                "fileCheckFrequency": "5s",
                "nodeStatusUpdateFrequency": "5s",
                "registerNode": True,
                "maxPods": 50,
            }, f)
        self.spawn("kubelet", [
            os.path.join(self.kube, "kubelet"), f"--config={cfg}", f"--kubeconfig={run}/kubelet.kubeconfig",
            f"--root-dir={self.kubelet_root}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=2",
        ])

    # --- what tests read ---

    def jwks(self):
        """The apiserver's service-account JWKS (what an OIDC relying party fetches)."""
        return json.loads(self.kubectl("get", "--raw", "/openid/v1/jwks"))

    def memory_mib(self):
        """RSS of each cluster process, MiB."""
        out = {}
        for name, p in self.procs.items():
            status = _read(f"/proc/{p.pid}/status") or ""
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) // 1024
        return out


def _env_from_install(lines):
    return dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)


def main(argv):
    """`cluster.py down RUN_DIR...` tears runs down (tests/run.sh's trap); `cluster.py up` starts
    one with install.sh's output on stdin and waits for Ctrl-C (for trying things by hand)."""
    if len(argv) >= 2 and argv[1] == "down":
        rc = 0
        for d in argv[2:]:
            if os.path.isdir(d):
                problems = teardown(d)
                for p in problems:
                    print(f"cluster down {d}: {p}", file=sys.stderr)
                rc = rc or (1 if problems else 0)
        return rc
    if len(argv) == 2 and argv[1] == "up":
        c = Cluster.start(_env_from_install(sys.stdin.read()))
        print(f"KUBECONFIG={c.kubeconfig}\nNETNS={c.netns}\nRUN_DIR={c.run_dir}", flush=True)
        print(f"kubectl: nsenter --net={c.netns} {c.kube}/kubectl --kubeconfig={c.kubeconfig}", flush=True)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            c.stop()
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
