//! Compiles `proto/harambee/v1/*.proto` with protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/harambee/v1/harambee.proto",
        "proto/harambee/v1/enrolment.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Upload chunks as `bytes::Bytes`: decoded as a view of the received buffer, not a
        // copy (the coordinator's hottest path: every update passes through it).
        .bytes(".harambee.v1.UploadUpdateRequest.data")
        .compile_fds(fds)?;
    Ok(())
}
