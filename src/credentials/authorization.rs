//! The authorization-code (3-legged) flow: `StartAuthorization` builds the provider's
//! authorization URL with a single-use `state` and PKCE; the provider's redirect to
//! `/oauth/callback` is checked against what was started, the code is exchanged exactly
//! once, and the result installed (refresh token stored, credential ACTIVE, token cached).
//! For a device-flow credential StartAuthorization starts the device authorization instead
//! (`device.rs`), which completes through the same installation.

use super::device::DeviceStart;
use super::runtime::CredentialRuntime;
use super::{check_ids, CredentialManager};
use crate::broker::BrokerError;
use crate::clock::UnixMillis;
use crate::context::{current_caller, with_caller};
use crate::events::EventKind;
use crate::store::CredentialStatus;
use crate::webhooks::notice;
use authgate_plugin_sdk::{AuthorizationRequest, CodeExchange, IssuedToken, ScopeSet, Secret};
use base64::Engine;
use dashmap::DashMap;
use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How long a started authorization may take (the user's login and consent).
pub const AUTHORIZATION_TTL: Duration = Duration::from_secs(600);

/// An authorization waiting for the provider's redirect.
#[derive(Clone)]
struct PendingAuthorization {
    tenant: String,
    credential_id: String,
    provider: String,
    /// The scopes as StartAuthorization named them: the cache key of the exchanged token.
    scopes: ScopeSet,
    code_verifier: Option<Secret>,
    redirect_uri: Url,
    expires_at_ms: UnixMillis,
    caller: Option<Arc<str>>,
    /// Set once the callback used it; kept until expiry so a replay is recognised.
    consumed: bool,
    /// The provider's consent page, for `/oauth/start` to send the browser to.
    provider_url: Url,
    /// With consent bound to a browser: the SHA-256 of the cookie `/oauth/start` set in the
    /// browser that opened the link first (`None` until then).
    browser: Option<[u8; 32]>,
}

/// The cookie that binds a consent to the browser that opened it; one per authorization
/// (named after the start of its state), so several can run in one browser.
pub fn consent_cookie_name(state: &str) -> String {
    let prefix: String = state.chars().take(16).collect();
    format!("authgate_consent_{prefix}")
}

/// How often at most a redirect with an unknown `state` is recorded (event and log line):
/// anyone can send them, unauthenticated, and each record is a store write.
const UNKNOWN_STATE_RECORD_EVERY_MS: i64 = 10_000;

/// Started authorizations by `state`, and the redirect URI registered with providers.
pub(super) struct Pending {
    by_state: DashMap<String, PendingAuthorization>,
    redirect_uri: RwLock<Url>,
    /// When an unknown state was last recorded, and how many arrived since unrecorded.
    unknown_states: parking_lot::Mutex<(UnixMillis, u64)>,
    /// `server.bind_consent_to_browser`.
    bind_to_browser: std::sync::atomic::AtomicBool,
}

impl Pending {
    pub fn new(redirect_uri: Url) -> Self {
        Self {
            by_state: DashMap::new(),
            redirect_uri: RwLock::new(redirect_uri),
            unknown_states: parking_lot::Mutex::new((UnixMillis::MIN, 0)),
            bind_to_browser: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether an unknown state seen at `now` is to be recorded, and how many were not
    /// recorded before it.
    fn record_unknown_state(&self, now: UnixMillis) -> Option<u64> {
        let mut u = self.unknown_states.lock();
        if now.saturating_sub(u.0) < UNKNOWN_STATE_RECORD_EVERY_MS {
            u.1 += 1;
            return None;
        }
        let suppressed = u.1;
        *u = (now, 0);
        Some(suppressed)
    }
}

/// What StartAuthorization started.
#[derive(Debug, Clone)]
pub enum Started {
    /// The authorization-code flow: send a browser to `url`; the provider redirects it to
    /// `redirect_uri` with `state`.
    Browser {
        url: Url,
        state: String,
        expires_at_ms: UnixMillis,
        redirect_uri: Url,
    },
    /// The device authorization grant: the user enters the code; authgate polls.
    Device(DeviceStart),
}

/// What the callback page tells the human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackOutcome {
    pub success: bool,
    pub title: String,
    pub detail: String,
}

impl CallbackOutcome {
    fn fail(title: &str, detail: impl Into<String>) -> Self {
        Self {
            success: false,
            title: title.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The query of a provider's redirect to `/oauth/callback`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Whether the callback comes from the browser the consent is bound to (always, when
/// consent is not bound to browsers).
fn browser_matches(bound: Option<&[u8; 32]>, cookie: Option<&str>, binding: bool) -> bool {
    if !binding {
        return true;
    }
    match (bound, cookie) {
        (Some(digest), Some(value)) => {
            let got: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            subtle::ConstantTimeEq::ct_eq(&got[..], &digest[..]).into()
        }
        _ => false,
    }
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl CredentialManager {
    /// The redirect URI registered with providers (known once the HTTP port is bound).
    pub fn set_redirect_uri(&self, uri: Url) {
        *self.0.authorizations.redirect_uri.write() = uri;
    }

    pub fn redirect_uri(&self) -> Url {
        self.0.authorizations.redirect_uri.read().clone()
    }

    /// `server.bind_consent_to_browser`: StartAuthorization answers with an authgate link
    /// (`/oauth/start`) that sets a cookie and forwards to the provider; the callback is
    /// accepted only from the browser holding that cookie.
    pub fn set_consent_binding(&self, on: bool) {
        self.0
            .authorizations
            .bind_to_browser
            .store(on, std::sync::atomic::Ordering::Release);
    }

    fn binds_to_browser(&self) -> bool {
        self.0
            .authorizations
            .bind_to_browser
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// `/oauth/start?state=...`: binds the authorization to this browser (the first to open
    /// the link) and says where to send it, with the cookie value to set.
    pub fn open_consent(&self, state: &str) -> Result<(Url, String), CallbackOutcome> {
        let now = self.0.set.clock().now_ms();
        let Some(mut p) = self.0.authorizations.by_state.get_mut(state) else {
            return Err(CallbackOutcome::fail(
                "Unknown authorization request",
                "authgate did not start this authorization (or restarted since). Start again with `authgate authorize`.",
            ));
        };
        if p.consumed || now >= p.expires_at_ms || p.browser.is_some() {
            return Err(CallbackOutcome::fail(
                "Link already used",
                "This consent link was already opened (in this or another browser), or it expired. Start again with `authgate authorize`.",
            ));
        }
        let nonce = random_token(32);
        p.browser = Some(Sha256::digest(nonce.as_bytes()).into());
        Ok((p.provider_url.clone(), nonce))
    }

    /// Starts the credential's consent step: the device authorization for a device-flow
    /// credential, otherwise the authorization-code flow.
    pub async fn start_authorization(
        &self,
        tenant: &str,
        id: &str,
        scopes: ScopeSet,
    ) -> Result<Started, BrokerError> {
        check_ids(tenant, id)?;
        let cred = self
            .0
            .set
            .get(tenant, id)
            .ok_or_else(|| BrokerError::not_found(tenant, id))?;
        let caps = cred.provider.capabilities();
        if caps.device_code {
            return self
                .start_device_authorization(cred, scopes)
                .await
                .map(Started::Device);
        }
        if !caps.authorization_code {
            return Err(BrokerError::Misconfigured(format!(
                "credential `{id}` (provider {}) uses neither the authorization-code flow nor the device flow; it gets tokens without a user's consent",
                cred.provider_kind
            )));
        }
        self.start_code_flow(cred, scopes).await
    }

    /// Starts the authorization-code flow: a single-use `state` (256 random bits) bound to
    /// the credential, PKCE S256 unless the provider cannot do it, valid 10 minutes.
    async fn start_code_flow(
        &self,
        cred: Arc<CredentialRuntime>,
        scopes: ScopeSet,
    ) -> Result<Started, BrokerError> {
        let (tenant, id) = (cred.tenant.as_str(), cred.id.as_str());
        let caps = cred.provider.capabilities();
        let now = self.0.set.clock().now_ms();
        let pending = &self.0.authorizations.by_state;
        pending.retain(|_, p| p.expires_at_ms > now);
        let state = random_token(32);
        let verifier = caps.pkce.then(|| random_token(32));
        let challenge = verifier.as_ref().map(|v| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()))
        });
        let redirect_uri = self.redirect_uri();
        let call = self.0.set.upstream_call(&cred);
        let request = AuthorizationRequest {
            scopes: scopes.clone(),
            state: state.clone(),
            code_challenge: challenge,
            redirect_uri: redirect_uri.clone(),
        };
        let url = cred
            .provider
            .authorization_url(&call, &request)
            .await
            .map_err(|e| BrokerError::from_provider(&e, &cred))?;
        let expires_at_ms = now + AUTHORIZATION_TTL.as_millis() as i64;
        pending.insert(
            state.clone(),
            PendingAuthorization {
                tenant: tenant.to_owned(),
                credential_id: id.to_owned(),
                provider: cred.provider_kind.clone(),
                scopes,
                code_verifier: verifier.map(Secret::from),
                redirect_uri: redirect_uri.clone(),
                expires_at_ms,
                caller: current_caller(),
                consumed: false,
                provider_url: url.clone(),
                browser: None,
            },
        );
        let url = if self.binds_to_browser() {
            let mut start = redirect_uri.join("start").map_err(|e| {
                BrokerError::Misconfigured(format!("cannot build the consent link: {e}"))
            })?;
            start.query_pairs_mut().append_pair("state", &state);
            start
        } else {
            url
        };
        self.0
            .set
            .record(
                &cred,
                EventKind::StatusChanged,
                "authorization started; waiting for the provider's redirect (valid 10 minutes)"
                    .into(),
            )
            .await;
        Ok(Started::Browser {
            url,
            state,
            expires_at_ms,
            redirect_uri,
        })
    }

    /// Handles the provider's redirect to `/oauth/callback`. `received_uri` is the callback
    /// URL as this request reached us (scheme, host, port, path), compared exactly with the
    /// registered one. Its events are recorded for the caller that started the flow.
    pub async fn handle_callback(
        &self,
        q: CallbackQuery,
        received_uri: &str,
        consent_cookie: Option<&str>,
    ) -> CallbackOutcome {
        let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
            return CallbackOutcome::fail(
                "Missing state",
                "This page is only reached through an authorization started by authgate. Start again with `authgate authorize`.",
            );
        };
        // Take the state out under the map's lock: two concurrent redirects with the same
        // state cannot both get past this point.
        let pending = match self.0.authorizations.by_state.get_mut(state) {
            None => {
                self.record_unknown_state().await;
                return CallbackOutcome::fail(
                    "Unknown authorization request",
                    "authgate did not start this authorization (or restarted since). Start again with `authgate authorize`.",
                );
            }
            Some(p)
                if !browser_matches(
                    p.browser.as_ref(),
                    consent_cookie,
                    self.binds_to_browser(),
                ) =>
            {
                // Not consumed: the browser that started the flow can still complete it.
                let (tenant, id) = (p.tenant.clone(), p.credential_id.clone());
                drop(p);
                self.0
                    .set
                    .events()
                    .record(&tenant, &id, EventKind::TokenFailed, "authorization callback rejected: not from the browser that opened the consent link".into())
                    .await;
                return CallbackOutcome::fail(
                    "Wrong browser",
                    "This consent was started in another browser (or its cookie is gone). Finish it there, or start again with `authgate authorize`.",
                );
            }
            Some(mut p) => {
                let snapshot = p.clone();
                p.consumed = true;
                snapshot
            }
        };
        let caller = pending.caller.clone();
        with_caller(caller, self.complete_callback(pending, q, received_uri)).await
    }

    async fn complete_callback(
        &self,
        pending: PendingAuthorization,
        q: CallbackQuery,
        received_uri: &str,
    ) -> CallbackOutcome {
        let (tenant, id) = (pending.tenant.as_str(), pending.credential_id.as_str());
        let record = |message: String| async move {
            self.0
                .set
                .events()
                .record(tenant, id, EventKind::TokenFailed, message)
                .await;
        };
        if let Err((event, outcome)) = self.check_redirect(&pending, &q, received_uri) {
            record(event).await;
            return outcome;
        }
        let Some(code) = q.code.filter(|c| !c.is_empty()) else {
            record("authorization callback rejected: no code in the redirect".into()).await;
            return CallbackOutcome::fail(
                "No authorization code",
                "The provider's redirect carried no code. Start again.",
            );
        };
        match self.exchange_and_install(&pending, code).await {
            Ok(()) => CallbackOutcome {
                success: true,
                title: "authgate is authorized".into(),
                detail: format!(
                    "Credential `{id}` of tenant `{tenant}` is active. You can close this window."
                ),
            },
            Err((event, outcome)) => {
                record(event).await;
                outcome
            }
        }
    }

    /// Whether the redirect belongs to the pending authorization and carries no error;
    /// otherwise the event to record and the page to show.
    fn check_redirect(
        &self,
        pending: &PendingAuthorization,
        q: &CallbackQuery,
        received_uri: &str,
    ) -> Result<(), (String, CallbackOutcome)> {
        let now = self.0.set.clock().now_ms();
        if pending.consumed {
            return Err((
                "authorization callback rejected: state already used (replayed redirect)".into(),
                CallbackOutcome::fail(
                    "Authorization already completed",
                    "This authorization link was already used. Start again with `authgate authorize` if you need to.",
                ),
            ));
        }
        if now >= pending.expires_at_ms {
            return Err((
                "authorization callback rejected: state expired".into(),
                CallbackOutcome::fail(
                    "Authorization expired",
                    "More than 10 minutes passed since the authorization started. Start again with `authgate authorize`.",
                ),
            ));
        }
        if received_uri != pending.redirect_uri.as_str() {
            return Err((
                format!(
                    "authorization callback rejected: reached at {received_uri}, but the registered redirect URI is {}",
                    pending.redirect_uri
                ),
                CallbackOutcome::fail(
                    "Redirect URI mismatch",
                    format!(
                        "The provider sent the browser to {received_uri}, not to the registered {}. Fix the redirect URI registered with the provider or authgate's server.public_url.",
                        pending.redirect_uri
                    ),
                ),
            ));
        }
        if let Some(error) = q.error.as_deref() {
            let desc = q.error_description.as_deref().unwrap_or("");
            let shown = if desc.is_empty() {
                error.to_owned()
            } else {
                format!("{error}: {desc}")
            };
            let shown: String = shown.chars().take(300).collect();
            let detail = if error == "access_denied" {
                "Consent was denied, so authgate has no access. Run `authgate authorize` again to retry.".to_owned()
            } else {
                format!("The provider answered `{shown}`. Run `authgate authorize` again; if it repeats, check the credential's settings.")
            };
            return Err((
                format!("authorization refused by the provider: {shown}"),
                CallbackOutcome::fail("Authorization refused", detail),
            ));
        }
        Ok(())
    }

    /// Exchanges the code (exactly once: a code is single-use, so no automatic retry) and
    /// installs the result: the refresh token stored durably first, the credential ACTIVE,
    /// the access token cached for the scopes the authorization was started with.
    async fn exchange_and_install(
        &self,
        pending: &PendingAuthorization,
        code: String,
    ) -> Result<(), (String, CallbackOutcome)> {
        let (tenant, id) = (pending.tenant.as_str(), pending.credential_id.as_str());
        let Some(cred) = self
            .0
            .set
            .get(tenant, id)
            .filter(|c| c.provider_kind == pending.provider)
        else {
            return Err((
                "authorization callback rejected: the credential changed or was deleted meanwhile"
                    .into(),
                CallbackOutcome::fail(
                    "Credential changed",
                    "The credential was deleted or changed during the authorization. Start again.",
                ),
            ));
        };
        let call = self.0.set.upstream_call(&cred);
        let code = Secret::from(code);
        call.redactor().learn(&code);
        let exchange = CodeExchange {
            code,
            code_verifier: pending.code_verifier.clone(),
            redirect_uri: pending.redirect_uri.clone(),
        };
        let sent_at = self.0.set.clock().now_ms();
        let issued = cred
            .provider
            .exchange_code(&call, exchange)
            .await
            .map_err(|e| {
                (
                    format!("authorization code exchange failed: {e}"),
                    CallbackOutcome::fail(
                        "Code exchange failed",
                        format!("{e}. Start again with `authgate authorize`."),
                    ),
                )
            })?;
        self.install_authorization(
            &cred,
            &pending.scopes,
            issued,
            sent_at,
            "authorization completed",
        )
        .await
        .map_err(|e: BrokerError| {
            (
                format!("authorization code exchanged but could not be stored: {e}"),
                CallbackOutcome::fail("Could not store the authorization", format!("{e}")),
            )
        })
    }

    /// Installs the result of a completed consent (code exchange or device approval): the
    /// refresh token stored durably first, earlier tokens dropped, the credential ACTIVE,
    /// the access token cached for the scopes the authorization was started with.
    pub(super) async fn install_authorization(
        &self,
        cred: &Arc<CredentialRuntime>,
        scopes: &ScopeSet,
        mut issued: IssuedToken,
        sent_at: UnixMillis,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let (tenant, id) = (cred.tenant.as_str(), cred.id.as_str());
        if let Some(rt) = issued.refresh_token.take() {
            self.0
                .set
                .store_refresh_token(tenant, id, Some(&rt))
                .await?;
            cred.set_refresh_token(Some(rt));
            cred.mark_refresh_token_used(self.0.set.clock().now_ms());
        }
        // Tokens of an earlier grant must not be served after a new consent.
        self.0.broker.drop_tokens(tenant, id, None);
        self.0.set.store().delete_tokens(tenant, id, None).await?;
        let completed = notice::authorization_completed(
            tenant,
            id,
            scopes.as_slice(),
            reason,
            self.0.set.clock().now_ms(),
        );
        self.0
            .set
            .set_status_notifying(
                cred,
                CredentialStatus::Active,
                reason,
                std::slice::from_ref(&completed),
            )
            .await?;
        self.0.broker.install(cred, scopes, issued, sent_at).await
    }

    /// Records an unknown state at most every 10 s (with how many came meanwhile), so a
    /// flood of forged redirects costs no store writes beyond that.
    async fn record_unknown_state(&self) {
        let now = self.0.set.clock().now_ms();
        let Some(unrecorded) = self.0.authorizations.record_unknown_state(now) else {
            return;
        };
        let also = if unrecorded > 0 {
            format!(" ({unrecorded} more since the last one recorded)")
        } else {
            String::new()
        };
        tracing::warn!(unrecorded, "authorization callback with an unknown state (forged, expired long ago, or from before a restart)");
        self.0
            .set
            .events()
            .record(
                "_authgate",
                "_callback",
                EventKind::TokenFailed,
                format!("authorization callback rejected: unknown state{also}"),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_states_are_recorded_at_most_every_ten_seconds_with_a_count() {
        let p = Pending::new(Url::parse("http://127.0.0.1/oauth/callback").unwrap());
        assert_eq!(p.record_unknown_state(1_000_000), Some(0));
        for t in 0..500 {
            assert_eq!(p.record_unknown_state(1_000_000 + t), None);
        }
        assert_eq!(p.record_unknown_state(1_009_999), None);
        assert_eq!(p.record_unknown_state(1_010_000), Some(501));
        assert_eq!(p.record_unknown_state(1_030_000), Some(0));
    }
}
