//! Compiles proto/ with protox (pure Rust, no protoc needed) and exports the descriptor
//! set for gRPC server reflection.

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = "proto/authgate/v1/authgate.proto";
    // The plugin protocol is spoken over a plugin's Unix socket, not the public port:
    // compiled to code, but kept out of the descriptor set that reflection serves.
    let plugin = "proto/authgate/plugin/v1/plugin.proto";
    let protos = [public, plugin];
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let public_fds = protox::compile([public], ["proto"])?;
    std::fs::write(
        out_dir.join("authgate_descriptor.bin"),
        public_fds.encode_to_vec(),
    )?;
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Messages that carry tokens (responses, the subject and actor tokens of an exchange):
        // their Debug impls are written by hand to redact.
        .skip_debug([
            ".authgate.v1.GetTokenResponse",
            ".authgate.v1.ExchangeTokenRequest",
            ".authgate.v1.ExchangeTokenResponse",
            // The plugin protocol carries settings (secrets), tokens, codes and upstream
            // bodies: Debug names the message only.
            ".authgate.plugin.v1.ValidateRequest",
            ".authgate.plugin.v1.ValidateResponse",
            ".authgate.plugin.v1.FetchRequest",
            ".authgate.plugin.v1.Token",
            ".authgate.plugin.v1.RevokeRequest",
            ".authgate.plugin.v1.AuthorizationUrlRequest",
            ".authgate.plugin.v1.ExchangeCodeRequest",
            ".authgate.plugin.v1.Header",
            ".authgate.plugin.v1.FormField",
            ".authgate.plugin.v1.SendRequest",
            ".authgate.plugin.v1.HttpResponse",
            ".authgate.plugin.v1.LogRequest",
        ])
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // `sqlx::migrate!` embeds migrations/ at compile time; a new migration file must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
