//! RFC 8693 token exchange with this credential's client: the same token endpoint and the
//! same client authentication (secrets with rotation, `private_key_jwt`) as its own grant.

use super::OAuth2Provider;
use authgate_plugin_sdk::exchange::{parse_exchange_response, TokenExchange};
use authgate_plugin_sdk::{ExchangedToken, ProviderError, UpstreamCall};

/// The step name recorded in upstream events.
const STEP_TOKEN_EXCHANGE: &str = "token_exchange";

impl OAuth2Provider {
    /// Exchanges the caller's subject token. `extra_params` are sent too, except `audience`
    /// and `resource` when the request names its own (the caller's target wins).
    pub(super) async fn token_exchange(
        &self,
        call: &UpstreamCall,
        req: &TokenExchange,
    ) -> Result<ExchangedToken, ProviderError> {
        let s = &self.settings;
        if !s.token_exchange {
            return Err(ProviderError::Unsupported(
                "token exchange is not enabled for this credential; set token_exchange = true in its settings (docs/grants/token_exchange.md)".into(),
            ));
        }
        let url = self.token_endpoint(call).await?;
        let mut form = req.form(&s.scope_separator, s.send_scope);
        let overridden = |name: &str| {
            (name == "audience" && !req.audience.is_empty())
                || (name == "resource" && !req.resource.is_empty())
        };
        form.extend(
            s.extra_params
                .iter()
                .filter(|(name, _)| !overridden(name))
                .cloned(),
        );
        let resp = self
            .authenticated(call, STEP_TOKEN_EXCHANGE, form, url, |resp, call| {
                parse_exchange_response(STEP_TOKEN_EXCHANGE, resp, call)
            })
            .await?;
        let mut token = self.issued(resp.token, &req.scopes);
        token.refresh_token = None;
        Ok(ExchangedToken {
            token,
            issued_token_type: resp.issued_token_type,
        })
    }
}
