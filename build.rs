//! Compiles proto/ with protox (pure Rust, no protoc needed) and exports the descriptor
//! set for gRPC server reflection.

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/authgate/v1/authgate.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("authgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Messages that carry tokens (responses, the subject and actor tokens of an exchange):
        // their Debug impls are written by hand to redact.
        .skip_debug([
            ".authgate.v1.GetTokenResponse",
            ".authgate.v1.ExchangeTokenRequest",
            ".authgate.v1.ExchangeTokenResponse",
        ])
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // `sqlx::migrate!` embeds migrations/ at compile time; a new migration file must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
