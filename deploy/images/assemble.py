#!/usr/bin/env python3
"""Assembles kvmount's container images from binaries already built, with no container engine.

`deploy/images/build.sh` builds the binaries (static musl, the cargo commands `cargo-commands`
prints) and then runs `assemble`. What the images hold is defined once, in IMAGES below: the
build script, the tests (tests/deploy/test_images.py) and, by those tests, the Dockerfiles
agree with it.

Reproducible by construction: every tar entry has a fixed mtime (SOURCE_DATE_EPOCH, else 0),
numeric owners, explicit modes and sorted names; gzip streams carry no name and mtime 0; JSON is
written with sorted keys and no timestamps. The same binaries and inputs give the same digests.

Outputs, under --out:
  oci/<image>/          OCI image layout: index.json -> one image index (tag in
                        org.opencontainers.image.ref.name) -> one manifest per platform
  docker/<image>-linux-<arch>.tar
                        docker-archive (`docker load`, `ctr images import`): manifest.json,
                        the config, uncompressed layer tars
  images.json           what was built: names, digests, paths, the cargo commands
Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import sys
import tarfile

# ---- what the images are ----------------------------------------------------------------------

# The uid/gid the images run as (distroless' `nonroot`); the chart runs the node daemon as 0
# (see deploy/README.md), the webhook and the agent as this user.
NONROOT = 65532
USER = f"{NONROOT}:{NONROOT}"

# Environment of every image: what the distroless base images set (the Dockerfiles' images
# inherit it), so both builds run the binaries alike.
ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
]

# Where the trusted roots go: the daemon, the webhook and the agent load the system's roots
# through rustls-native-certs (SSL_CERT_FILE, else this Debian path), never built-in ones.
CA_BUNDLE_PATH = "etc/ssl/certs/ca-certificates.crt"

# The cargo commands that build the binaries, per Rust target (the Dockerfiles run the same
# ones; tests/deploy/test_images.py compares them). The daemon and the webhook are built by one
# command, as bench/run.sh builds what it measures: their dependencies are compiled once, with
# the features of both. Without the `dev` feature: no mock vault, demo credentials or fault API
# in what ships. The agent has its own profile (`panic = "abort"` in every crate).
CARGO_BUILDS = [
    {"profile": "dist", "packages": ["kvmount-provider", "kvmount-sidecar"],
     "bins": ["kvmount-provider", "kvmount-sidecar"], "flags": ["--no-default-features"]},
    {"profile": "dist-agent", "packages": ["kvmount-sidecar"], "bins": ["kvmount-agent"], "flags": []},
]

# Each image: its binaries (where each goes), entrypoint, command and ports.
IMAGES = {
    "kvmount-provider": {
        "title": "kvmount-provider",
        "description": "kvmount node daemon: Azure Key Vault secrets as tmpfs files in Kubernetes pods (Secrets Store CSI Driver provider and standalone CSI driver)",
        "binaries": {"/usr/local/bin/kvmount-provider": "kvmount-provider"},
        "entrypoint": ["/usr/local/bin/kvmount-provider"],
        "cmd": ["serve"],
        "ports": [],
    },
    "kvmount-sidecar": {
        "title": "kvmount-sidecar",
        "description": "kvmount admission webhook and the agent it injects into pods (kvmount-agent: agent, exec, probe, install)",
        "binaries": {
            "/usr/local/bin/kvmount-sidecar": "kvmount-sidecar",
            "/usr/local/bin/kvmount-agent": "kvmount-agent",
        },
        "entrypoint": ["/usr/local/bin/kvmount-sidecar"],
        "cmd": [],
        "ports": ["8443/tcp"],
    },
}

# Image platform -> Rust target (static musl) and OCI platform fields.
ARCHES = {
    "amd64": {"target": "x86_64-unknown-linux-musl", "platform": {"architecture": "amd64", "os": "linux"}},
    "arm64": {"target": "aarch64-unknown-linux-musl", "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
}

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def cargo_command(build: dict, target: str) -> list[str]:
    """The cargo command of one entry of CARGO_BUILDS for one Rust target."""
    packages = [w for p in build["packages"] for w in ("-p", p)]
    bins = [w for b in build["bins"] for w in ("--bin", b)]
    return ["cargo", "build", "--locked", "--profile", build["profile"], *packages, *bins,
            *build["flags"], "--target", target]


def build_of(binary: str) -> dict:
    (build,) = [b for b in CARGO_BUILDS if binary in b["bins"]]
    return build


def binary_output(target_dir: pathlib.Path, binary: str, target: str) -> pathlib.Path:
    return target_dir / target / build_of(binary)["profile"] / binary


# ---- deterministic bytes ----------------------------------------------------------------------

def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layer:
    """A layer tar built in memory from explicit entries: no file-system metadata leaks in."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.entries: dict[str, tuple] = {}

    def dir(self, path: str, mode: int = 0o755, owner: int = 0) -> None:
        self.entries[path.strip("/")] = ("dir", mode, owner, None)

    def file(self, path: str, data: bytes, mode: int = 0o644, owner: int = 0) -> None:
        path = path.strip("/")
        parent = pathlib.PurePosixPath(path).parent
        while str(parent) != ".":
            self.entries.setdefault(str(parent), ("dir", 0o755, 0, None))
            parent = parent.parent
        self.entries[path] = ("file", mode, owner, data)

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(self.entries):
                kind, mode, owner, data = self.entries[name]
                info = tarfile.TarInfo(name)
                info.mode = mode
                info.uid = info.gid = owner
                info.uname = info.gname = ""
                info.mtime = self.epoch
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    # No file name, mtime 0: the same input gives the same stream (with the same zlib).
    return gzip.compress(data, compresslevel=9, mtime=0)


def base_layer(epoch: int, ca_bundle: bytes, ca_copyright: bytes) -> Layer:
    """What the distroless `static` base gives that the binaries use: users and groups for
    65532 `nonroot`, the CA bundle, a writable /tmp and nonroot's home. The same for every
    image and platform."""
    layer = Layer(epoch)
    layer.file("etc/passwd", (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
    ).encode())
    layer.file("etc/group", (
        "root:x:0:\n"
        "nobody:x:65534:\n"
        f"nonroot:x:{NONROOT}:\n"
    ).encode())
    layer.file(CA_BUNDLE_PATH, ca_bundle)
    layer.file("usr/share/doc/ca-certificates/copyright", ca_copyright)
    layer.dir("root", 0o700)
    layer.dir("home", 0o755)
    layer.dir("home/nonroot", 0o700, NONROOT)
    layer.dir("tmp", 0o1777)
    return layer


# ---- assembly ---------------------------------------------------------------------------------

class Blobs:
    """The blobs of one OCI layout (content-addressed, written once)."""

    def __init__(self, root: pathlib.Path):
        self.dir = root / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, media_type: str, **extra) -> dict:
        digest = sha256(data)
        path = self.dir / digest.split(":", 1)[1]
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def labels(image: str, spec: dict, args) -> dict:
    return {
        "org.opencontainers.image.title": spec["title"],
        "org.opencontainers.image.description": spec["description"],
        "org.opencontainers.image.source": args.source,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.licenses": args.licenses,
    }


def image_config(spec: dict, arch: str, diff_ids: list[str], history: list[dict], image_labels: dict) -> dict:
    config = {
        "User": USER,
        "Env": ENV,
        "Entrypoint": spec["entrypoint"],
        "WorkingDir": "/",
        "Labels": image_labels,
    }
    if spec["cmd"]:
        config["Cmd"] = spec["cmd"]
    if spec["ports"]:
        config["ExposedPorts"] = {p: {} for p in spec["ports"]}
    return {
        **ARCHES[arch]["platform"],
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        # No `created` anywhere: a timestamp would make every build a new image.
        "history": history,
    }


def docker_archive(path: pathlib.Path, name: str, config: bytes, layer_tars: list[bytes], epoch: int) -> None:
    """A docker-archive tarball (the `docker save` format that `docker load` and containerd's
    `ctr images import` read): manifest.json, the config as <hex>.json, each layer
    uncompressed as <diff-id hex>/layer.tar."""
    config_name = sha256(config).split(":", 1)[1] + ".json"
    layer_names = [sha256(t).split(":", 1)[1] + "/layer.tar" for t in layer_tars]
    manifest = [{"Config": config_name, "RepoTags": [name], "Layers": layer_names}]
    archive = Layer(epoch)
    archive.file("manifest.json", canonical_json(manifest))
    archive.file(config_name, config)
    for layer_name, data in zip(layer_names, layer_tars):
        archive.file(layer_name, data)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(archive.tar())
    tmp.replace(path)


def assemble(args) -> dict:
    out = pathlib.Path(args.out)
    ca_bundle = pathlib.Path(args.ca_bundle).read_bytes()
    ca_copyright = pathlib.Path(args.ca_copyright).read_bytes()
    binaries = dict(b.split("=", 1) for b in args.binary)  # "<arch>/<bin>" -> file
    arches = args.arch.split(",")
    for arch in arches:
        if arch not in ARCHES:
            sys.exit(f"assemble.py: unknown arch {arch!r}; accepted: {', '.join(ARCHES)}")

    base = base_layer(args.epoch, ca_bundle, ca_copyright).tar()
    summary = {"repository": args.repository, "tag": args.tag, "images": {}}
    (out / "docker").mkdir(parents=True, exist_ok=True)
    for image, spec in IMAGES.items():
        name = f"{args.repository}/{image}:{args.tag}"
        layout = out / "oci" / image
        if layout.exists():
            shutil.rmtree(layout)
        blobs = Blobs(layout)
        image_labels = labels(image, spec, args)
        entry = {"name": name, "layout": str(layout), "platforms": {}}
        manifests = []
        for arch in arches:
            layer = Layer(args.epoch)
            for path, binary in spec["binaries"].items():
                layer.file(path, pathlib.Path(binaries[f"{arch}/{binary}"]).read_bytes(), 0o755)
            layer_tars = [base, layer.tar()]
            history = [
                {"created_by": f"deploy/images/build.sh: base files (users 0 and {NONROOT}, CA certificates from Debian ca-certificates {args.ca_version}, /tmp)"},
                {"created_by": "deploy/images/build.sh: " + "; ".join(
                    " ".join(cargo_command(build_of(b), ARCHES[arch]["target"])) + f" -> {path}"
                    for path, b in spec["binaries"].items())},
            ]
            diff_ids = [sha256(t) for t in layer_tars]
            config = canonical_json(image_config(spec, arch, diff_ids, history, image_labels))
            config_desc = blobs.put(config, MEDIA_CONFIG)
            layer_descs = [blobs.put(gzip_bytes(t), MEDIA_LAYER_GZIP) for t in layer_tars]
            manifest = canonical_json({
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": config_desc,
                "layers": layer_descs,
                "annotations": image_labels,
            })
            manifest_desc = blobs.put(manifest, MEDIA_MANIFEST, platform=ARCHES[arch]["platform"])
            manifests.append(manifest_desc)
            archive = out / "docker" / f"{image}-linux-{arch}.tar"
            docker_archive(archive, name, config, layer_tars, args.epoch)
            entry["platforms"][arch] = {
                "manifest": manifest_desc["digest"],
                "config": config_desc["digest"],
                "layers": [d["digest"] for d in layer_descs],
                "diff_ids": diff_ids,
                "docker_archive": str(archive),
                "docker_archive_sha256": sha256(archive.read_bytes()),
                "binaries": {path: sha256(pathlib.Path(binaries[f"{arch}/{b}"]).read_bytes())
                             for path, b in spec["binaries"].items()},
            }
        index = canonical_json({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": manifests,
            "annotations": image_labels,
        })
        index_desc = blobs.put(index, MEDIA_INDEX, annotations={
            "org.opencontainers.image.ref.name": args.tag,
            "io.containerd.image.name": name,
        })
        (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_bytes(canonical_json({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [index_desc],
        }))
        entry["index"] = index_desc["digest"]
        entry["cargo"] = {
            arch: [cargo_command(build_of(b), ARCHES[arch]["target"]) for b in spec["binaries"].values()]
            for arch in arches
        }
        summary["images"][image] = entry
    (out / "images.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    cmds = sub.add_parser("cargo-commands", help="for an arch, one line per cargo command: the binaries it builds (BIN=FILE, comma-separated), a tab, the command (tab-separated)")
    cmds.add_argument("--arch", required=True, choices=sorted(ARCHES))
    cmds.add_argument("--target-dir", required=True)

    asm = sub.add_parser("assemble", help="write the OCI layouts and docker archives")
    asm.add_argument("--out", required=True)
    asm.add_argument("--repository", required=True)
    asm.add_argument("--tag", required=True)
    asm.add_argument("--version", required=True)
    asm.add_argument("--revision", required=True)
    asm.add_argument("--source", required=True)
    asm.add_argument("--licenses", required=True)
    asm.add_argument("--epoch", type=int, required=True)
    asm.add_argument("--arch", required=True, help="comma-separated: amd64,arm64")
    asm.add_argument("--ca-bundle", required=True)
    asm.add_argument("--ca-copyright", required=True)
    asm.add_argument("--ca-version", required=True)
    asm.add_argument("--binary", action="append", default=[], help="ARCH/BIN=FILE, repeated")
    args = parser.parse_args()

    if args.command == "cargo-commands":
        target = ARCHES[args.arch]["target"]
        for build in CARGO_BUILDS:
            outputs = ",".join(f"{b}={binary_output(pathlib.Path(args.target_dir), b, target)}" for b in build["bins"])
            print(outputs, *cargo_command(build, target), sep="\t")
    else:
        summary = assemble(args)
        for image, entry in summary["images"].items():
            print(f"{entry['name']}  index {entry['index']}")
            for arch, p in entry["platforms"].items():
                print(f"  linux/{arch}: manifest {p['manifest']}  config {p['config']}")
                print(f"    docker-archive {p['docker_archive']}  {p['docker_archive_sha256']}")


if __name__ == "__main__":
    main()
