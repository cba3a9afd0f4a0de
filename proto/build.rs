//! Compiles `proto/gpukill/v1/*.proto` with protox (no system `protoc` needed) and generates
//! the prost messages and tonic client/server with tonic-prost-build, and the daemon's servers
//! once more with a shared, once-encoded Watch response (`shared_server`). The compiled file
//! descriptor set (imports and comments included) is written next to them for server
//! reflection ([`FILE_DESCRIPTOR_SET`](../src/lib.rs)).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/gpukill/v1/gpukill.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    std::fs::write(
        out_dir.join("gpukill_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors.clone())?;
    // The daemon's servers again, with every message taken from `v1` except Watch's
    // response, which is `shared::SharedWatchResponse` (wire-identical): its snapshot is
    // encoded once per snapshot and shared by every watcher that asked for the same thing.
    let shared = out_dir.join("shared_server");
    std::fs::create_dir_all(&shared)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".gpukill.v1", "crate::v1")
        .extern_path(
            ".gpukill.v1.WatchResponse",
            "crate::shared::SharedWatchResponse",
        )
        .out_dir(&shared)
        .compile_fds(descriptors)?;
    Ok(())
}
