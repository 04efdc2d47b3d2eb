//! The device authorization grant (RFC 8628): `StartAuthorization` for a device-flow
//! credential asks the provider for a user code, and one background poll per credential
//! asks the token endpoint until the user approves, denies, or the code expires.
//!
//! The poll honours the provider's `interval` (5 s by default), adds 5 s for every
//! `slow_down` (§3.5), doubles the interval after a transient failure (§3.5: a timeout must
//! reduce the polling frequency), and stops at `expires_in`. Each poll is an upstream call,
//! recorded as an event under the caller that started it; there are at most
//! `expires_in / interval` of them. Approval completes like the authorization-code callback
//! (refresh token stored durably, credential ACTIVE, token cached; other replicas follow the
//! stored change). Denial, expiry and other refusals leave the credential's status as it
//! was, with `last_error` and an event saying what happened and what to do.
//!
//! A poll is a task owned by this module, not by the RPC that started it: it survives the
//! RPC returning, is replaced by a new StartAuthorization of the same credential, stops when
//! the credential is deleted or its settings change, and is aborted when the manager goes.
//! On PostgreSQL only the replica that started it polls.

use super::runtime::CredentialRuntime;
use super::{CredentialManager, Parts};
use crate::broker::BrokerError;
use crate::clock::{monotonic_now, UnixMillis};
use crate::context::{current_caller, with_caller};
use crate::events::EventKind;
use authgate_plugin_sdk::device::{is_denied, is_expired, SLOW_DOWN_STEP};
use authgate_plugin_sdk::{DevicePoll, IssuedToken, ProviderError, ScopeSet, Secret};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::task::AbortHandle;
use url::Url;

/// The longest a device authorization is polled, whatever `expires_in` the provider sent.
pub const MAX_DEVICE_EXPIRY: Duration = Duration::from_secs(3600);

/// After transient failures the interval doubles up to this (or stays above it when
/// `slow_down` already raised it further).
const MAX_BACKOFF_INTERVAL: Duration = Duration::from_secs(60);

/// The interval after a poll answered `slow_down` (RFC 8628 §3.5: +5 s, for good).
fn after_slow_down(interval: Duration) -> Duration {
    interval + SLOW_DOWN_STEP
}

/// The interval after a transient failure: doubled up to [`MAX_BACKOFF_INTERVAL`], never
/// shorter than it was.
fn after_transient(interval: Duration) -> Duration {
    interval.max((interval * 2).min(MAX_BACKOFF_INTERVAL))
}

/// What StartAuthorization tells the user of a device-flow credential.
#[derive(Debug, Clone)]
pub struct DeviceStart {
    pub user_code: String,
    pub verification_uri: Url,
    pub verification_uri_complete: Option<Url>,
    pub expires_at_ms: UnixMillis,
    pub interval: Duration,
}

/// The running polls, one per credential at most.
#[derive(Default)]
pub(super) struct DevicePolls {
    running: Mutex<HashMap<(String, String), (u64, AbortHandle)>>,
    next_generation: AtomicU64,
}

impl DevicePolls {
    fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a credential's poll; aborts and reports the one it replaces.
    fn replace(&self, key: (String, String), generation: u64, task: AbortHandle) -> bool {
        let old = self.running.lock().insert(key, (generation, task));
        old.is_some_and(|(_, old)| {
            let was_running = !old.is_finished();
            old.abort();
            was_running
        })
    }

    /// Stops a credential's poll, if one runs.
    pub(super) fn cancel(&self, tenant: &str, id: &str) {
        if let Some((_, task)) = self
            .running
            .lock()
            .remove(&(tenant.to_owned(), id.to_owned()))
        {
            task.abort();
        }
    }

    /// A poll that ended takes itself out, unless a newer one replaced it.
    fn finished(&self, key: &(String, String), generation: u64) {
        let mut running = self.running.lock();
        if running.get(key).is_some_and(|(g, _)| *g == generation) {
            running.remove(key);
        }
    }

    /// How many polls run (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.lock().len()
    }
}

impl Drop for DevicePolls {
    fn drop(&mut self) {
        for (_, (_, task)) in self.running.get_mut().drain() {
            task.abort();
        }
    }
}

/// One credential's poll.
struct Poll {
    tenant: String,
    id: String,
    /// The scopes StartAuthorization named: the cache key of the issued token.
    scopes: ScopeSet,
    device_code: Secret,
    interval: Duration,
    deadline: tokio::time::Instant,
    expires_in: Duration,
    /// The credential it was started for, and the digest of its settings: a reload with the
    /// same settings (a resync, another replica's status change) keeps the poll going.
    cred: Arc<CredentialRuntime>,
    settings_digest: String,
    generation: u64,
    polls: u32,
    slow_downs: u32,
}

/// How a poll ended.
enum End {
    Approved(Box<IssuedToken>, UnixMillis),
    Denied(ProviderError),
    Expired(String),
    Failed(ProviderError),
    /// The credential was deleted or its settings changed.
    Abandoned,
}

impl CredentialManager {
    /// Starts the device authorization of `cred` and the poll that completes it, replacing
    /// a poll already running for it.
    pub(super) async fn start_device_authorization(
        &self,
        cred: Arc<CredentialRuntime>,
        scopes: ScopeSet,
    ) -> Result<DeviceStart, BrokerError> {
        let (tenant, id) = (cred.tenant.clone(), cred.id.clone());
        let settings_digest = self
            .0
            .set
            .store()
            .get_credential(&tenant, &id)
            .await?
            .ok_or_else(|| BrokerError::not_found(&tenant, &id))?
            .settings_digest;
        let call = self.0.set.upstream_call(&cred);
        let auth = cred
            .provider
            .start_device_authorization(&call, &scopes)
            .await
            .map_err(|e| BrokerError::from_provider(&e, &cred))?;
        let expires_in = auth.expires_in.min(MAX_DEVICE_EXPIRY);
        let expires_at_ms = self.0.set.clock().now_ms() + expires_in.as_millis() as i64;
        let devices = &self.0.devices;
        let generation = devices.next_generation();
        let poll = Poll {
            tenant: tenant.clone(),
            id: id.clone(),
            scopes,
            device_code: auth.device_code,
            interval: auth.interval,
            deadline: monotonic_now() + expires_in,
            expires_in,
            cred: cred.clone(),
            settings_digest,
            generation,
            polls: 0,
            slow_downs: 0,
        };
        let task = tokio::spawn(with_caller(
            current_caller(),
            run(Arc::downgrade(&self.0), poll),
        ));
        let replaced = devices.replace((tenant, id), generation, task.abort_handle());
        let shown = auth
            .verification_uri_complete
            .as_ref()
            .unwrap_or(&auth.verification_uri);
        self.0
            .set
            .record(
                &cred,
                EventKind::StatusChanged,
                format!(
                    "device authorization started{}: the user enters code {} at {shown}; polling every {} s until approved (valid {} s)",
                    if replaced { ", replacing the pending one" } else { "" },
                    auth.user_code,
                    auth.interval.as_secs(),
                    expires_in.as_secs(),
                ),
            )
            .await;
        Ok(DeviceStart {
            user_code: auth.user_code,
            verification_uri: auth.verification_uri,
            verification_uri_complete: auth.verification_uri_complete,
            expires_at_ms,
            interval: auth.interval,
        })
    }

    /// One poll: `None` to poll again after the (possibly raised) interval.
    async fn poll_once(&self, p: &mut Poll) -> Option<End> {
        if monotonic_now() >= p.deadline {
            return Some(End::Expired(format!(
                "the user did not approve within {} s",
                p.expires_in.as_secs()
            )));
        }
        let Some(cred) = self.still_current(p).await else {
            return Some(End::Abandoned);
        };
        let call = self.0.set.upstream_call(&cred);
        call.redactor().learn(&p.device_code);
        let sent_at = self.0.set.clock().now_ms();
        p.polls += 1;
        match cred.provider.poll_device_token(&call, &p.device_code).await {
            Ok(DevicePoll::Issued(t)) => Some(End::Approved(Box::new(t), sent_at)),
            Ok(DevicePoll::Pending) => None,
            Ok(DevicePoll::SlowDown) => {
                p.slow_downs += 1;
                p.interval = after_slow_down(p.interval);
                tracing::debug!(tenant = %p.tenant, credential = %p.id, interval_s = p.interval.as_secs(), "device authorization: slow_down; polling less often");
                None
            }
            Err(e) if is_denied(&e) => Some(End::Denied(e)),
            Err(e) if is_expired(&e) => Some(End::Expired(e.to_string())),
            Err(e) if e.is_transient() => {
                p.interval = after_transient(p.interval);
                tracing::info!(tenant = %p.tenant, credential = %p.id, error = %e, interval_s = p.interval.as_secs(), "device authorization poll failed; polling less often");
                None
            }
            Err(e) => Some(End::Failed(e)),
        }
    }

    /// The credential to poll for: the one started for, or its reload with the same
    /// settings; `None` once it is deleted or its settings changed.
    async fn still_current(&self, p: &mut Poll) -> Option<Arc<CredentialRuntime>> {
        let held = self.0.set.get(&p.tenant, &p.id)?;
        if Arc::ptr_eq(&held, &p.cred) {
            return Some(held);
        }
        let rec = self
            .0
            .set
            .store()
            .get_credential(&p.tenant, &p.id)
            .await
            .ok()
            .flatten()?;
        if rec.settings_digest != p.settings_digest || rec.provider != held.provider_kind {
            return None;
        }
        p.cred = held.clone();
        Some(held)
    }

    /// Completes or closes the authorization, with the event and `last_error` that say so.
    async fn end_poll(&self, p: &Poll, end: End) {
        let again = format!(
            "run `authgate authorize --tenant {} --credential {}` again",
            p.tenant, p.id
        );
        let failure = match end {
            End::Approved(issued, sent_at) => {
                let done = self
                    .install_authorization(
                        &p.cred,
                        &p.scopes,
                        *issued,
                        sent_at,
                        "device authorization approved",
                    )
                    .await;
                match done {
                    Ok(()) => {
                        tracing::info!(tenant = %p.tenant, credential = %p.id, polls = p.polls, slow_downs = p.slow_downs, "device authorization approved");
                        return;
                    }
                    Err(e) => format!(
                        "device authorization approved, but it could not be stored: {e}; {again}"
                    ),
                }
            }
            End::Denied(e) => format!("device authorization denied by the user ({e}); {again}"),
            End::Expired(why) => format!("device authorization expired ({why}); {again}"),
            End::Failed(e) => format!("device authorization failed: {e}; {again}"),
            End::Abandoned => {
                tracing::info!(tenant = %p.tenant, credential = %p.id, "device authorization abandoned: the credential was deleted or its settings changed");
                return;
            }
        };
        tracing::warn!(tenant = %p.tenant, credential = %p.id, polls = p.polls, error = %failure, "device authorization ended without a token");
        self.0.set.authorization_failed(&p.cred, failure).await;
    }
}

/// The poll task: waits the interval, polls, until the flow ends or the manager is gone.
async fn run(manager: Weak<Parts>, mut p: Poll) {
    loop {
        let wake = (monotonic_now() + p.interval).min(p.deadline);
        tokio::time::sleep_until(wake).await;
        let Some(parts) = manager.upgrade() else {
            return;
        };
        let me = CredentialManager(parts);
        if let Some(end) = me.poll_once(&mut p).await {
            me.end_poll(&p, end).await;
            me.0.devices
                .finished(&(p.tenant.clone(), p.id.clone()), p.generation);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_down_adds_five_seconds_and_failures_double_up_to_a_minute() {
        let s = Duration::from_secs;
        assert_eq!(after_slow_down(s(1)), s(6));
        assert_eq!(after_slow_down(after_slow_down(s(5))), s(15));
        assert_eq!(after_transient(s(5)), s(10));
        assert_eq!(after_transient(s(40)), s(60));
        assert_eq!(
            after_transient(s(90)),
            s(90),
            "never shorter than slow_down made it"
        );
    }

    #[tokio::test]
    async fn a_new_poll_replaces_the_running_one_and_a_stale_one_does_not_remove_it() {
        let polls = DevicePolls::default();
        let key = ("t".to_owned(), "c".to_owned());
        let first = tokio::spawn(std::future::pending::<()>());
        assert!(!polls.replace(key.clone(), 1, first.abort_handle()));
        let second = tokio::spawn(std::future::pending::<()>());
        assert!(polls.replace(key.clone(), 2, second.abort_handle()));
        assert!(first.await.unwrap_err().is_cancelled());
        polls.finished(&key, 1);
        assert_eq!(polls.len(), 1, "the older poll does not take out the newer");
        polls.finished(&key, 2);
        assert_eq!(polls.len(), 0);
        let third = tokio::spawn(std::future::pending::<()>());
        polls.replace(key.clone(), 3, third.abort_handle());
        drop(polls);
        assert!(
            third.await.unwrap_err().is_cancelled(),
            "dropped with the manager"
        );
        second.abort();
    }
}
