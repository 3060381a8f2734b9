"""The images (issues 19 and 20): deploy/images/build.sh, the Dockerfiles and the chart agree.

Fast checks first (no image build): the shipped daemon's dependency tree has no mock vault; the
Dockerfiles run the same cargo commands, install the same files and set the same user,
entrypoint, command and ports as build.sh (deploy/images/assemble.py holds its definition);
the chart's default image references are the names build.sh gives.

Then build.sh itself, run twice (the second run warm: nothing to compile) into two
directories: the digests repeat and every file is byte-identical; the OCI layouts and docker
archives are consistent (every blob's sha256, sizes, diff_ids recomputed from the layers); the
binaries are static (no PT_INTERP, no DT_NEEDED) and for the right machine (readelf); files,
owners and modes are what the config says; the shipped binaries hold none of the mock vault's
strings (and a build with the `dev` feature holds them all, so the search is not vacuous).
The compiled binaries are cached per machine in ${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}/
images-target (build.sh): the first build is the slow part (see deploy/README.md).
KVMOUNT_IMAGES=skip skips the build and what needs it.
"""

import gzip
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import re
import ssl
import subprocess
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES_DIR = ROOT / "deploy" / "images"
BUILD = IMAGES_DIR / "build.sh"


def load_assemble():
    spec = importlib.util.spec_from_file_location("kvmount_assemble", IMAGES_DIR / "assemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


A = load_assemble()

# Strings only the mock vault puts in a binary: its fault and stats API, the demo seed's
# tenant, client ids, client secret and issuer, its CLI flags and ready line, and the crates
# only it links (the rsa crate of RUSTSEC-2023-0071, p521), by their source paths in panic
# locations.
MOCK_STRINGS = [
    b"/_mock/faults",
    b"/_mock/stats",
    b"00000000-0000-0000-0000-000000000001",
    b"00000000-0000-0000-0000-00000000000a",
    b"app-a-password",
    b"oidc.kvmount.local",
    b"imds-listen",
    b"kvmount mock vault ready",
    b"/rsa-0.",
    b"/p521-0.",
]


def cargo(*args: str) -> str:
    return subprocess.run(["cargo", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


# ---- the shipped daemon's dependencies ----------------------------------------------------------

@pytest.mark.parametrize("build", A.CARGO_BUILDS, ids=lambda b: b["profile"])
def test_shipped_binaries_do_not_depend_on_the_mock(build):
    """Built as the images build them (the same packages, features and target), no binary
    links kvmount-mock-vault, rsa or p521."""
    packages = [w for p in build["packages"] for w in ("-p", p)]
    tree = cargo("tree", "--locked", "-e", "normal", "--prefix", "none", *packages, *build["flags"],
                 "--target", A.ARCHES["amd64"]["target"])
    crates = {line.split()[0] for line in tree.splitlines() if line.strip()}
    assert "kvmount-provider" in crates or "kvmount-sidecar" in crates
    assert crates & {"kvmount-mock-vault", "rsa", "p521"} == set()


def test_the_dev_feature_is_what_brings_the_mock():
    """The positive control of the check above: with default features the mock is there."""
    tree = cargo("tree", "--locked", "-e", "normal", "--prefix", "none", "-p", "kvmount-provider")
    crates = {line.split()[0] for line in tree.splitlines() if line.strip()}
    assert {"kvmount-mock-vault", "rsa"} <= crates


# ---- Dockerfiles against build.sh ---------------------------------------------------------------

def dockerfile_image(name: str) -> dict:
    """What a Dockerfile ships: the cargo commands it runs, the files its final stage installs
    (path -> binary name), user, entrypoint, command, ports and base."""
    import dockerfile

    commands = dockerfile.parse_file(str(IMAGES_DIR / name / "Dockerfile"))
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    build, final = commands[:last_from], commands[last_from:]
    cargo_cmds, outputs = [], {}
    for c in build:
        if c.cmd != "RUN":
            continue
        for part in " ".join(c.value).split("&&"):
            words = [w for w in part.split() if w != "\\"]
            if words[:2] == ["cargo", "build"]:
                cargo_cmds.append(words)
            if words[:1] == ["install"]:
                # install -D -m 0755 target/<target>/<profile>/<bin> /out/<bin>
                outputs[words[-1]] = pathlib.PurePosixPath(words[-2]).name
    installed = {}
    for c in final:
        if c.cmd == "COPY":
            srcs, dest = [v for v in c.value[:-1] if not v.startswith("--")], c.value[-1]
            for src in srcs:
                path = dest.rstrip("/") + "/" + pathlib.PurePosixPath(src).name if dest.endswith("/") else dest
                installed[path] = outputs.get(src)
    def last(cmd):
        found = [c for c in final if c.cmd == cmd]
        return found[-1] if found else None
    entry, cmd, user = last("ENTRYPOINT"), last("CMD"), last("USER")
    assert entry is None or entry.json, "exec-form ENTRYPOINT"
    assert cmd is None or cmd.json, "exec-form CMD"
    return {
        "base": final[0].value[0],
        "cargo": cargo_cmds,
        "installed": installed,
        "user": user.value[0] if user else None,
        "entrypoint": list(entry.value) if entry else [],
        "cmd": list(cmd.value) if cmd else [],
        "ports": sorted(p if "/" in p else p + "/tcp" for c in final if c.cmd == "EXPOSE" for p in c.value),
    }


@pytest.mark.parametrize("name", sorted(A.IMAGES))
def test_dockerfile_and_build_sh_ship_the_same(name):
    spec, df = A.IMAGES[name], dockerfile_image(name)
    target = A.ARCHES["amd64"]["target"]
    # The same cargo commands for the binaries (the Dockerfiles build linux/amd64).
    builds = {id(A.build_of(b)): A.build_of(b) for b in spec["binaries"].values()}.values()
    assert sorted(df["cargo"]) == sorted(A.cargo_command(b, target) for b in builds)
    # The same binaries at the same paths, and nothing else.
    assert df["installed"] == spec["binaries"]
    assert df["user"] == A.USER
    assert df["entrypoint"] == spec["entrypoint"]
    assert df["cmd"] == spec["cmd"]
    assert df["ports"] == sorted(spec["ports"])
    # distroless `static`: the base build.sh reproduces (no libc: the binaries are static).
    assert re.fullmatch(r"gcr\.io/distroless/static(-debian\d+)?:nonroot", df["base"]), df["base"]


def build_sh_default(variable: str) -> str:
    match = re.search(r"\$\{%s:-([^}]+)\}" % re.escape(variable), BUILD.read_text())
    assert match, variable
    return match.group(1)


def test_chart_defaults_name_the_images_build_sh_builds():
    """`helm install` with default values pulls exactly what build.sh names (its default
    repository, tag = the crate version), the injected agent included."""
    from test_deploy import render

    version = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
    repository = build_sh_default("KVMOUNT_IMAGE_REPOSITORY")
    expected = {f"{repository}/{image}:{version}" for image in A.IMAGES}
    docs = render(None, "--set", "mode=standalone", "--set", "webhook.enabled=true",
                  "--set", "webhook.tls.mode=helm")
    images = set()
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            if "kvmount" in c["image"].rsplit("/", 1)[-1]:
                images.add(c["image"])
            images.update(a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--agent-image="))
    assert images == expected


# ---- build.sh, twice ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def built(tmp_path_factory):
    if os.environ.get("KVMOUNT_IMAGES") == "skip":
        pytest.skip("KVMOUNT_IMAGES=skip")
    outs = []
    # tests/run.sh's background build of both platforms (KVMOUNT_IMAGE_DIR) is the first build
    # when there is one: the second then compiles nothing and must give the same bytes.
    earlier = os.environ.get("KVMOUNT_IMAGE_DIR")
    if earlier and all(set(e["platforms"]) >= {"amd64", "arm64"}
                       for e in json.loads((pathlib.Path(earlier) / "images.json").read_text())["images"].values()):
        outs.append(pathlib.Path(earlier))
    for run in ("first", "second")[len(outs):]:
        out = tmp_path_factory.mktemp(f"images-{run}")
        env = {**os.environ, "KVMOUNT_IMAGE_OUT": str(out)}
        for var in ("KVMOUNT_IMAGE_REPOSITORY", "KVMOUNT_IMAGE_TAG", "KVMOUNT_IMAGE_ARCH", "SOURCE_DATE_EPOCH"):
            env.pop(var, None)
        proc = subprocess.run([str(BUILD)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        print(proc.stdout)
        outs.append(out)
    return outs


def summary(out: pathlib.Path) -> dict:
    return json.loads((out / "images.json").read_text())


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(out: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "images.json"}


def test_two_builds_give_the_same_digests(built):
    first, second = built
    def digests(s):
        return {name: (e["index"], {a: (p["manifest"], p["config"], p["docker_archive_sha256"]) for a, p in e["platforms"].items()})
                for name, e in s["images"].items()}
    assert digests(summary(first)) == digests(summary(second))
    a, b = files_under(first), files_under(second)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def blob(layout: pathlib.Path, desc: dict) -> bytes:
    algo, hexd = desc["digest"].split(":", 1)
    data = (layout / "blobs" / algo / hexd).read_bytes()
    assert sha(data) == desc["digest"] and len(data) == desc["size"], desc
    return data


def layer_entries(tar_bytes: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name.rstrip("/"): (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_oci_layouts_are_consistent(built):
    out = built[0]
    for image, entry in summary(out)["images"].items():
        layout = out / "oci" / image
        assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
        top = json.loads((layout / "index.json").read_text())
        assert top["schemaVersion"] == 2 and len(top["manifests"]) == 1
        (ref,) = top["manifests"]
        assert ref["mediaType"] == A.MEDIA_INDEX and ref["digest"] == entry["index"]
        assert ref["annotations"]["org.opencontainers.image.ref.name"] == summary(out)["tag"]
        assert ref["annotations"]["io.containerd.image.name"] == entry["name"]
        index = json.loads(blob(layout, ref))
        assert index["mediaType"] == A.MEDIA_INDEX
        platforms = {m["platform"]["architecture"]: m for m in index["manifests"]}
        assert sorted(platforms) == ["amd64", "arm64"]
        assert platforms["arm64"]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
        referenced = {ref["digest"]}
        for arch, desc in platforms.items():
            assert desc["mediaType"] == A.MEDIA_MANIFEST and desc["platform"]["os"] == "linux"
            manifest = json.loads(blob(layout, desc))
            config = json.loads(blob(layout, manifest["config"]))
            assert manifest["config"]["mediaType"] == A.MEDIA_CONFIG
            assert config["architecture"] == arch and config["os"] == "linux"
            layers = [blob(layout, d) for d in manifest["layers"]]
            assert all(d["mediaType"] == A.MEDIA_LAYER_GZIP for d in manifest["layers"])
            assert config["rootfs"] == {"type": "layers", "diff_ids": [sha(gzip.decompress(l)) for l in layers]}
            assert len(config["history"]) == len(layers)
            assert "created" not in config and all("created" not in h for h in config["history"])
            referenced |= {desc["digest"], manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])}
        on_disk = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
        assert on_disk == referenced, "no missing or stray blobs"


def docker_archive(path: pathlib.Path) -> tuple[dict, dict, list[bytes]]:
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    (manifest,) = json.loads(files["manifest.json"])
    config_bytes = files[manifest["Config"]]
    assert manifest["Config"] == sha(config_bytes).split(":")[1] + ".json"
    return manifest, json.loads(config_bytes), [files[l] for l in manifest["Layers"]]


def test_docker_archives_are_consistent(built):
    out = built[0]
    for image, entry in summary(out)["images"].items():
        for arch, p in entry["platforms"].items():
            path = pathlib.Path(p["docker_archive"])
            assert path == out / "docker" / f"{image}-linux-{arch}.tar"
            manifest, config, layers = docker_archive(path)
            assert manifest["RepoTags"] == [entry["name"]]
            assert config["rootfs"]["diff_ids"] == [sha(l) for l in layers] == p["diff_ids"]
            assert config["architecture"] == arch
            # The same image as the OCI layout's: the same config blob.
            assert sha((out / "oci" / image / "blobs" / "sha256" / p["config"].split(":")[1]).read_bytes()) == p["config"]
            assert sha(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()) == p["config"]


def image_files(out: pathlib.Path, image: str, arch: str) -> tuple[dict, dict]:
    """The config and the merged file system (path -> (TarInfo, bytes)) of one image."""
    _, config, layers = docker_archive(out / "docker" / f"{image}-linux-{arch}.tar")
    merged = {}
    for layer in layers:
        merged.update(layer_entries(layer))
    return config, merged


def readelf(flag: str, data: bytes, tmp_path: pathlib.Path) -> str:
    path = tmp_path / "bin"
    path.write_bytes(data)
    return subprocess.run(["readelf", flag, "-W", str(path)], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("arch,machine", [("amd64", "Advanced Micro Devices X86-64"), ("arm64", "AArch64")])
@pytest.mark.parametrize("image", sorted(A.IMAGES))
def test_image_contents(built, image, arch, machine, tmp_path):
    spec = A.IMAGES[image]
    config, files = image_files(built[0], image, arch)
    c = config["config"]
    assert c["User"] == "65532:65532"
    assert c["Entrypoint"] == spec["entrypoint"]
    assert c.get("Cmd", []) == spec["cmd"]
    assert sorted(c.get("ExposedPorts", {})) == sorted(spec["ports"])
    assert c["Env"] == A.ENV
    labels = c["Labels"]
    assert labels["org.opencontainers.image.title"] == image
    assert labels["org.opencontainers.image.version"] == summary(built[0])["tag"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", labels["org.opencontainers.image.revision"])
    # Every entry: fixed mtime, numeric owner 0 or 65532.
    assert {info.mtime for info, _ in files.values()} == {0}
    assert {(info.uid, info.gid) for info, _ in files.values()} <= {(0, 0), (65532, 65532)}
    # The binaries: exactly the spec's, root-owned 0755, static, for this machine.
    binaries = {p for p, (info, _) in files.items() if p.startswith("usr/local/bin/") and info.isfile()}
    assert binaries == {p.lstrip("/") for p in spec["binaries"]}
    for path in binaries:
        info, data = files[path]
        assert (info.mode, info.uid) == (0o755, 0)
        assert f"Machine:                           {machine}" in readelf("-h", data, tmp_path)
        assert "INTERP" not in readelf("-l", data, tmp_path)
        assert "(NEEDED)" not in readelf("-d", data, tmp_path)
    # What distroless static gives: users, the CA bundle, /tmp, nonroot's home.
    passwd = files["etc/passwd"][1].decode()
    assert "nonroot:x:65532:65532:" in passwd and passwd.startswith("root:x:0:0:")
    assert "nonroot:x:65532:" in files["etc/group"][1].decode()
    bundle = files["etc/ssl/certs/ca-certificates.crt"][1]
    assert bundle.count(b"-----BEGIN CERTIFICATE-----") > 100
    # Every PEM block is whole (the bundle is files put end to end) and loads as a trust root.
    (tmp_path / "ca.crt").write_bytes(bundle)
    loaded = ssl.create_default_context(cafile=str(tmp_path / "ca.crt")).get_ca_certs()
    assert len(loaded) == bundle.count(b"-----BEGIN CERTIFICATE-----")
    assert b"-----BEGIN CERTIFICATE-----\nMIIDjjCCAnagAwIBAgIQAzrx5qcRqaC7KGSxHQn65TANBgkqhkiG9w0BAQsFADBh" in bundle, \
        "DigiCert Global Root G2 (Key Vault's TLS chain) is in the bundle"
    assert files["tmp"][0].mode == 0o1777
    assert (files["home/nonroot"][0].uid, files["home/nonroot"][0].mode) == (65532, 0o700)


def test_shipped_binaries_hold_no_mock_strings(built):
    """grep of every binary of both images, both platforms, for the mock vault's strings."""
    found = {}
    for image in A.IMAGES:
        for arch in A.ARCHES:
            _, files = image_files(built[0], image, arch)
            for path, (info, data) in files.items():
                if path.startswith("usr/local/bin/"):
                    hits = [s.decode() for s in MOCK_STRINGS if s in data]
                    if hits:
                        found[f"{image} {arch} /{path}"] = hits
    assert found == {}


def test_the_mock_strings_are_found_in_a_dev_build():
    """The grep above finds something when it is there: every string is in the `dev` build of
    the daemon (tests/run.sh builds target/debug first)."""
    dev = ROOT / "target" / "debug" / "kvmount-provider"
    if not dev.is_file():
        pytest.skip("no target/debug/kvmount-provider")
    help_out = subprocess.run([str(dev), "--help"], capture_output=True, text=True).stdout
    if "mock-vault" not in help_out:
        pytest.skip("target/debug/kvmount-provider was built without the dev feature")
    data = dev.read_bytes()
    assert [s.decode() for s in MOCK_STRINGS if s not in data] == []


def test_the_shipped_daemon_refuses_dev_and_mock_vault(built, tmp_path):
    """The amd64 binaries run here: the daemon says it has no mock vault; both start."""
    if os.uname().machine != "x86_64":
        pytest.skip("runs the amd64 binaries")
    _, files = image_files(built[0], "kvmount-provider", "amd64")
    daemon = tmp_path / "kvmount-provider"
    daemon.write_bytes(files["usr/local/bin/kvmount-provider"][1])
    daemon.chmod(0o755)
    for sub in (["dev"], ["mock-vault", "--listen", "127.0.0.1:0"]):
        proc = subprocess.run([str(daemon), *sub], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1
        assert "this build has no mock vault" in proc.stderr and "--features dev" in proc.stderr
    helped = subprocess.run([str(daemon), "--help"], capture_output=True, text=True, check=True).stdout
    assert "mock-vault" not in helped and "serve" in helped
    subprocess.run([str(daemon), "serve", "--help"], capture_output=True, check=True)
    _, files = image_files(built[0], "kvmount-sidecar", "amd64")
    for name in ("kvmount-sidecar", "kvmount-agent"):
        path = tmp_path / name
        path.write_bytes(files[f"usr/local/bin/{name}"][1])
        path.chmod(0o755)
        subprocess.run([str(path), "--help"], capture_output=True, check=True)
