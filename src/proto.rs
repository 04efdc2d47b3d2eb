//! Generated gRPC types for `authgate.v1`, and the descriptor set served by reflection.

// Generated code is not held to the workspace lints (its service glue has long functions).
#![allow(clippy::all, clippy::too_many_lines, missing_docs)]

pub mod v1 {
    tonic::include_proto!("authgate.v1");
}

/// `authgate.plugin.v1`: the protocol between the gateway and out-of-process plugins.
pub mod plugin {
    pub mod v1 {
        tonic::include_proto!("authgate.plugin.v1");
    }
}

/// Debug for messages that carry secrets: the message's name and nothing else.
macro_rules! opaque_debug {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name).finish_non_exhaustive()
            }
        }
    )*};
}

opaque_debug! {
    plugin::v1::ValidateRequest => "ValidateRequest",
    plugin::v1::ValidateResponse => "ValidateResponse",
    plugin::v1::FetchRequest => "FetchRequest",
    plugin::v1::Token => "Token",
    plugin::v1::RevokeRequest => "RevokeRequest",
    plugin::v1::AuthorizationUrlRequest => "AuthorizationUrlRequest",
    plugin::v1::ExchangeCodeRequest => "ExchangeCodeRequest",
    plugin::v1::Header => "Header",
    plugin::v1::FormField => "FormField",
    plugin::v1::SendRequest => "SendRequest",
    plugin::v1::HttpResponse => "HttpResponse",
    plugin::v1::LogRequest => "LogRequest",
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

impl std::fmt::Debug for v1::ExchangeTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeTokenRequest")
            .field("tenant", &self.tenant)
            .field("credential_id", &self.credential_id)
            .field("subject_token", &"[redacted]")
            .field("subject_token_type", &self.subject_token_type)
            .field(
                "actor_token",
                &(!self.actor_token.is_empty()).then_some("[redacted]"),
            )
            .field("actor_token_type", &self.actor_token_type)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scopes", &self.scopes)
            .field("requested_token_type", &self.requested_token_type)
            .field("min_ttl_seconds", &self.min_ttl_seconds)
            .finish()
    }
}

impl std::fmt::Debug for v1::ExchangeTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeTokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("issued_token_type", &self.issued_token_type)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn exchange_messages_debug_without_tokens() {
        let req = v1::ExchangeTokenRequest {
            subject_token: "canary-subject".into(),
            actor_token: "canary-actor".into(),
            ..Default::default()
        };
        let resp = v1::ExchangeTokenResponse {
            access_token: "canary-issued".into(),
            ..Default::default()
        };
        let shown = format!("{req:?} {resp:?}");
        assert!(!shown.contains("canary"), "{shown}");
    }
}
