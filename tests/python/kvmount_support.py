"""What the Python suites share: a child process (the mock vault, the daemon) whose stdout
announces readiness with one line, its stderr kept for the failure message; gRPC stubs
generated from the repository's .proto files at test time; scratch directories (one on tmpfs
for the daemon's state); the webhook started with self-managed TLS."""

import contextlib
import importlib
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs(tmp, proto):
    """protoc-generated Python modules of proto/proto/<proto>.proto, written under `tmp`."""
    import grpc_tools
    from grpc_tools import protoc

    out = os.path.join(tmp, "stubs")
    os.makedirs(out, exist_ok=True)
    proto_dir = os.path.join(ROOT, "proto", "proto")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", os.path.join(proto_dir, proto + ".proto")])
    assert rc == 0, "protoc failed"
    if out not in sys.path:
        sys.path.insert(0, out)
    return importlib.import_module(proto + "_pb2"), importlib.import_module(proto + "_pb2_grpc")


class Proc:
    """A child process with its stdout piped (for the ready line) and its stderr in a file."""

    def __init__(self, argv):
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err, text=True)

    def ready_line(self, pattern, timeout=120):
        """The match of the first stdout line that matches `pattern`; fails the test with the
        child's stderr when none comes within `timeout` seconds."""
        found = []

        def read():
            for line in self.proc.stdout:
                m = pattern.match(line.strip())
                if m:
                    found.append(m)
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not found:
            pytest.fail(f"no ready line; stderr: {self.log()[-3000:]!r}")
        return found[0]

    def log(self):
        """Everything the child wrote to stderr so far."""
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def scratch_dirs(prefix):
    """A temp directory and one on tmpfs (`KVMOUNT_TEST_SHM`, else /dev/shm) for a daemon's
    `--state-dir`; both removed afterwards."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    shm = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("KVMOUNT_TEST_SHM", "/dev/shm"))
    try:
        yield tmp, shm
    finally:
        subprocess.run(["rm", "-rf", tmp, shm], check=False)


@contextlib.contextmanager
def webhook_process(flags=()):
    """`kvmount-sidecar webhook` (KVMOUNT_SIDECAR_BIN) on a free port with self-managed TLS for
    `localhost`, once `/readyz` answers 200: yields (port, an SSL context trusting its CA)."""
    binary = os.environ.get("KVMOUNT_SIDECAR_BIN")
    if not binary:
        pytest.fail("KVMOUNT_SIDECAR_BIN is not set (tests/run.sh sets it to target/debug/kvmount-sidecar)")
    with tempfile.TemporaryDirectory(prefix="kvmount-pytest-webhook.") as tmp:
        ca = os.path.join(tmp, "ca.crt")
        proc = subprocess.Popen(
            [binary, "webhook", "--listen", "127.0.0.1:0", "--tls-self-managed",
             "--tls-dns-name", "localhost", "--ca-bundle-out", ca, *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "POD_NAMESPACE")},
        )
        port = None
        lines = []
        deadline = time.monotonic() + 20
        try:
            while port is None:
                line = proc.stderr.readline()
                if not line:
                    raise RuntimeError("webhook exited:\n" + "".join(lines))
                lines.append(line)
                if "addr=" in line:
                    port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
                if time.monotonic() > deadline:
                    raise RuntimeError("webhook never listened:\n" + "".join(lines))
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            context = ssl.create_default_context(cafile=ca)
            while True:  # ready once the serving certificate is issued
                try:
                    with urllib.request.urlopen(f"https://localhost:{port}/readyz", context=context, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("webhook never ready")
                time.sleep(0.05)
            yield port, context
        finally:
            proc.terminate()
            proc.wait(timeout=10)
