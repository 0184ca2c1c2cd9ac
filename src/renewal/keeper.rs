//! One certificate kept current: obtained, renewed at a share of its lifetime with jitter, and
//! renewed at once when the CA starts signing with another intermediate or revokes it (each
//! renewal brings a new key). The certificate is published on a `watch`; a failed attempt
//! leaves the current one in service and is tried again after a delay that shrinks as its
//! expiry nears. Instance identities, the cell's own credential and the server API's
//! certificate are each kept by one of these.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::schedule::{random_draw, retry_delay, Schedule, RETRY_MIN};
use crate::clock::Clock;

/// The serials (lowercase hex) the CA has revoked, as the CRLs list them.
pub type RevokedSerials = Arc<HashSet<String>>;

/// What a keeper needs to know of the certificates it keeps.
pub trait Kept: Send + Sync + 'static {
    /// When it expires.
    fn not_after(&self) -> OffsetDateTime;
    /// SHA-256 (hex) of the intermediate that signed it, when known.
    fn issuer_sha256(&self) -> Option<&str>;
    /// Its serial, hex, for the logs.
    fn serial_hex(&self) -> &str;
}

/// Where a keeper gets each new certificate (and its new key) from.
pub trait Renewer: Send + Sync + 'static {
    /// What it hands out.
    type Cert: Kept;
    /// Why it could not.
    type Error: std::fmt::Display + Send;

    /// A new certificate. Called again, after a delay, when it fails.
    fn obtain(&self) -> impl Future<Output = Result<Self::Cert, Self::Error>> + Send;

    /// Called when a new certificate replaced one that was in service.
    fn renewed(&self) {}

    /// Called when an attempt failed.
    fn failed(&self) {}
}

/// When the keeper tries next and how its last attempts went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// When the next attempt is due.
    pub next: Option<OffsetDateTime>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// The last attempt's error, while attempts are failing.
    pub last_error: Option<String>,
}

/// Keeps one certificate current until cancelled; see the module documentation.
pub struct Keeper<R: Renewer> {
    renewer: R,
    what: String,
    schedule: Schedule,
    clock: Clock,
    signer: Option<watch::Receiver<String>>,
    revoked: Option<watch::Receiver<RevokedSerials>>,
    current: watch::Sender<Option<Arc<R::Cert>>>,
    /// When the current certificate's lifetime counts from (when it arrived).
    since: Option<OffsetDateTime>,
    attempts: watch::Sender<Attempts>,
}

impl<R: Renewer> Keeper<R> {
    /// A keeper with no certificate yet: it obtains one as soon as it runs. `what` names the
    /// certificate in the logs.
    pub fn new(renewer: R, what: impl Into<String>, schedule: Schedule, clock: Clock) -> Self {
        Keeper {
            renewer,
            what: what.into(),
            schedule,
            clock,
            signer: None,
            revoked: None,
            current: watch::Sender::new(None),
            since: None,
            attempts: watch::Sender::new(Attempts::default()),
        }
    }

    /// Starts from `cert`, in service since `since`, instead of obtaining one first.
    pub fn starting_with(mut self, cert: R::Cert, since: OffsetDateTime) -> Self {
        self.current.send_replace(Some(Arc::new(cert)));
        self.since = Some(since);
        self
    }

    /// Follows `signer`, the SHA-256 (hex) of the intermediate the CA signs with ("" while
    /// unknown): when it changes away from the current certificate's issuer, the certificate
    /// is renewed at once, before the old intermediate's root can be pruned.
    pub fn following_signer(mut self, signer: watch::Receiver<String>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Follows `revoked`, the serials (lowercase hex) the CA has revoked: when it comes to
    /// hold the current certificate's, a new one is obtained at once.
    pub fn following_revocations(mut self, revoked: watch::Receiver<RevokedSerials>) -> Self {
        self.revoked = Some(revoked);
        self
    }

    /// The certificate in service, as it changes; `None` until the first one arrives.
    pub fn certificates(&self) -> watch::Receiver<Option<Arc<R::Cert>>> {
        self.current.subscribe()
    }

    /// When the next attempt is due, as it changes.
    pub fn attempts(&self) -> watch::Receiver<Attempts> {
        self.attempts.subscribe()
    }

    /// Keeps the certificate current until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut failures = 0u32;
        let mut next = match (self.current.borrow().as_ref(), self.since) {
            _ if self.is_revoked() => self.clock.now(),
            (Some(cert), Some(since)) => self.renewal_point(since, cert.not_after()),
            _ => self.clock.now(),
        };
        // Published here, then after each attempt: a wake-up that changes nothing says nothing.
        self.attempts.send_modify(|a| a.next = Some(next));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.clock.sleep_until(next) => {}
                signer = next_signer(&mut self.signer) => {
                    if !self.signed_by_other_than(&signer) {
                        continue;
                    }
                    tracing::info!(certificate = %self.what, signer = %signer,
                        "the CA signs with a new intermediate; renewing under it");
                }
                () = next_revocation(&mut self.revoked) => {
                    if !self.is_revoked() {
                        continue;
                    }
                    tracing::warn!(certificate = %self.what,
                        "the certificate was revoked; replacing it with a new key");
                }
            }
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                attempt = self.renewer.obtain() => attempt,
            };
            let now = self.clock.now();
            match attempt {
                Ok(cert) => {
                    failures = 0;
                    next = self.renewal_point(now, cert.not_after());
                    self.since = Some(now);
                    let cert = Arc::new(cert);
                    match self.current.send_replace(Some(cert.clone())) {
                        Some(old) => {
                            self.renewer.renewed();
                            tracing::info!(certificate = %self.what, old_serial = %old.serial_hex(),
                                serial = %cert.serial_hex(), not_after = %cert.not_after(),
                                renew_at = %next, "certificate renewed");
                        }
                        None => tracing::info!(certificate = %self.what,
                            serial = %cert.serial_hex(), not_after = %cert.not_after(),
                            renew_at = %next, "certificate obtained"),
                    }
                    self.attempts.send_replace(Attempts {
                        next: Some(next),
                        failures,
                        last_error: None,
                    });
                }
                Err(e) => {
                    failures += 1;
                    self.renewer.failed();
                    let valid_until = self.current.borrow().as_ref().map(|c| c.not_after());
                    let delay = retry_delay(failures, now, valid_until);
                    next = now + delay;
                    if valid_until.is_some_and(|t| t <= now) {
                        tracing::error!(certificate = %self.what, error = %e, failures,
                            retry_in = ?delay, "the certificate has expired and cannot be renewed");
                    } else {
                        tracing::warn!(certificate = %self.what, error = %e, failures,
                            retry_in = ?delay, still_valid_until = ?valid_until,
                            "could not obtain a certificate; retrying");
                    }
                    self.attempts.send_replace(Attempts {
                        next: Some(next),
                        failures,
                        last_error: Some(e.to_string()),
                    });
                }
            }
        }
    }

    /// When a certificate in service since `since` is renewed: on the schedule, but never
    /// sooner than [`RETRY_MIN`] from now. A certificate cut short by its intermediate's expiry
    /// comes back just as short when renewed; the floor keeps such renewals from running hot
    /// until the new intermediate arrives.
    fn renewal_point(&self, since: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
        let scheduled = self.schedule.renew_at(since, not_after, random_draw());
        scheduled.max(self.clock.now() + RETRY_MIN)
    }

    /// Whether the CA has revoked the current certificate.
    fn is_revoked(&self) -> bool {
        let (Some(revoked), Some(cert)) = (&self.revoked, self.current.borrow().clone()) else {
            return false;
        };
        let revoked = revoked.borrow().clone();
        revoked.contains(cert.serial_hex())
    }

    /// Whether the CA now signs with `signer` and the current certificate came from another
    /// intermediate (or there is none yet).
    fn signed_by_other_than(&self, signer: &str) -> bool {
        if signer.is_empty() {
            return false;
        }
        match self.current.borrow().as_ref() {
            Some(cert) => cert.issuer_sha256() != Some(signer),
            None => true,
        }
    }
}

/// Resolves when the revoked serials change; never once there is none to follow.
async fn next_revocation(revoked: &mut Option<watch::Receiver<RevokedSerials>>) {
    let Some(rx) = revoked.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *revoked = None;
        std::future::pending::<()>().await;
    }
}

/// The next value of `signer`; never resolves once there is none to follow.
async fn next_signer(signer: &mut Option<watch::Receiver<String>>) -> String {
    loop {
        let Some(rx) = signer.as_mut() else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
        *signer = None;
    }
}

#[cfg(test)]
#[path = "keeper_tests.rs"]
mod tests;
