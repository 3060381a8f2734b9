//! Generates the gRPC code from `proto/*.proto` with protox (a pure-Rust
//! protobuf compiler), so building needs no `protoc` on PATH.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/provider.proto",
        "proto/csi.proto",
        "proto/pluginregistration.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // These messages carry secret values or tokens: the crate writes
        // their Debug impls by hand so no field content is ever printed.
        .skip_debug([
            ".v1alpha1.MountRequest",
            ".v1alpha1.MountResponse",
            ".v1alpha1.File",
            ".csi.v1.NodePublishVolumeRequest",
            ".csi.v1.NodeStageVolumeRequest",
            ".csi.v1.NodeExpandVolumeRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
