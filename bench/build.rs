//! Compiles the baseline echo service's proto with protox (no protoc on the machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/authgate_bench/v1/echo.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
