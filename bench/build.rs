//! Compiles the baseline echo service's proto with protox (no protoc on the machine). Its
//! messages are authgate's own, so the generated code refers to `authgate::proto::v1`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/authgate_bench/v1/echo.proto"];
    let fds = protox::compile(protos, ["proto", "../proto"])?;
    tonic_prost_build::configure()
        .extern_path(".authgate.v1", "::authgate::proto::v1")
        .build_client(false)
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=../proto/authgate/v1/authgate.proto");
    Ok(())
}
