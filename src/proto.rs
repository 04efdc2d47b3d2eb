//! Generated gRPC types for `authgate.v1`, and the descriptor set served by reflection.

// Generated code is not held to the workspace lints (its service glue has long functions).
#![allow(clippy::all, clippy::too_many_lines, missing_docs)]

pub mod v1 {
    tonic::include_proto!("authgate.v1");
}

/// The encoded `FileDescriptorSet` of the public API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/authgate_descriptor.bin"));

impl std::fmt::Debug for v1::GetTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetTokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("metadata", &self.metadata)
            .finish()
    }
}
