"""What the Python suites share: a child process (the mock vault, the daemon) whose stdout
announces readiness with one line, its stderr kept for the failure message; and gRPC stubs
generated from the repository's .proto files at test time."""

import importlib
import os
import subprocess
import sys
import tempfile
import threading

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
