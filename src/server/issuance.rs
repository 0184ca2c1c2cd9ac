//! Issuance: CA + ledger behind the [`Authority`] interface.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::api::{
    Authority, Caller, Cause, Denial, Error, JwtRequest, SignRequest, SignedCert, SignedJwt,
};
use crate::ca::{self, CertificateAuthority, Credential, Issued, Principal};
use crate::clock::Clock;
use crate::ids::Ttl;
use crate::jwt::JwtKeys;
use crate::ledger::Ledger;
use crate::placement::Placement;
use crate::server::limits::{self, Limits};
use crate::server::revocations::{Revocations, Revoked};
use crate::server::Registry;
use crate::store::{EntryKind, LedgerRecord};

/// Issues certificates and records each issuance and denial durably before answering.
#[derive(Clone)]
pub struct IssuanceService {
    ca: Arc<CertificateAuthority>,
    ledger: Ledger,
    registry: Registry,
    clock: Clock,
    /// What each client may cost; nothing is limited unless set.
    limits: Option<Arc<Limits>>,
    /// The apps and cells that get no certificate; none unless set.
    revocations: Option<Revocations>,
    /// The keys that sign JWT-SVIDs; none are issued unless set.
    jwt: Option<Arc<JwtKeys>>,
}

impl IssuanceService {
    /// A service signing with `ca`, recording in `ledger`, placing cells' requests against
    /// `registry`, and reading the time from `clock`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        ledger: Ledger,
        registry: Registry,
        clock: Clock,
    ) -> Self {
        IssuanceService {
            ca,
            ledger,
            registry,
            clock,
            limits: None,
            revocations: None,
            jwt: None,
        }
    }

    /// The same service, issuing JWT-SVIDs signed with `keys`.
    pub fn with_jwt(self, keys: Arc<JwtKeys>) -> Self {
        IssuanceService {
            jwt: Some(keys),
            ..self
        }
    }

    /// The JWT-SVID signing keys, when set.
    pub fn jwt(&self) -> Option<&Arc<JwtKeys>> {
        self.jwt.as_ref()
    }

    /// The same service, refusing what `revocations` says is revoked.
    pub fn with_revocations(self, revocations: Revocations) -> Self {
        IssuanceService {
            revocations: Some(revocations),
            ..self
        }
    }

    /// The revocations followed, when set.
    pub fn revocations(&self) -> Option<&Revocations> {
        self.revocations.as_ref()
    }

    /// What is revoked now, when this service follows revocations.
    fn revoked(&self) -> Option<Arc<Revoked>> {
        Some(self.revocations.as_ref()?.now())
    }

    /// The same service, holding clients to `limits`.
    pub fn with_limits(self, limits: limits::Settings) -> Self {
        IssuanceService {
            limits: Some(Arc::new(Limits::new(limits))),
            ..self
        }
    }

    /// The limits, when set.
    pub fn limits(&self) -> Option<&Arc<Limits>> {
        self.limits.as_ref()
    }

    /// Records what the cell limits held back: for cells whose minute is over, or every cell
    /// when `all` (at shutdown).
    pub async fn record_held_back(&self, all: bool) {
        let Some(limits) = &self.limits else { return };
        for record in limits.summaries(self.clock.now(), all) {
            if let Err(e) = self.ledger.append(record).await {
                tracing::error!(error = %e, "cannot record what a cell's limits held back");
            }
        }
    }

    /// The time certificates are issued at.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The CA in use.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The ledger this service records in.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Issues for `caller`. An operator's request is taken as it is. A cell gets a certificate
    /// only for an instance the registry places on that cell, and for the placement as
    /// registered, whatever the request claims; anything else is refused and the denial,
    /// naming the cell, the instance and the reason, is recorded.
    pub async fn sign_as(
        &self,
        caller: &Caller,
        mut req: SignRequest,
        now: OffsetDateTime,
    ) -> Result<SignedCert, Error> {
        req.placement = self
            .placed_for(caller, req.placement, Asked::Certificate, now)
            .await?;
        self.sign_at(req, now).await
    }

    /// A JWT-SVID for `caller`, placed as [`IssuanceService::sign_as`] places a certificate.
    /// An audience no token can carry is refused first, before anything is recorded.
    pub async fn sign_jwt_as(
        &self,
        caller: &Caller,
        mut req: JwtRequest,
        now: OffsetDateTime,
    ) -> Result<SignedJwt, Error> {
        check_audience(&req.audience)?;
        req.placement = self
            .placed_for(caller, req.placement, Asked::JwtSvid, now)
            .await?;
        self.issue_jwt(req, now).await
    }

    /// The placement `caller` may have an identity for: an operator's as given, a cell's as
    /// the registry has it, when the registry places it on that cell. A cell's denial is
    /// recorded, saying what was `asked` for.
    async fn placed_for(
        &self,
        caller: &Caller,
        placement: Placement,
        asked: Asked,
        now: OffsetDateTime,
    ) -> Result<Placement, Error> {
        let Caller::Cell(cell) = caller else {
            return Ok(placement);
        };
        let now_ms = crate::clock::unix_ms(now);
        if let Some(limits) = &self.limits {
            if !limits.admit_sign(cell, now_ms) {
                return Err(Error::Unavailable(Cause::Throttled(format!(
                    "cell {cell} is over its sign rate (server.cell_sign_rate); retry later"
                ))));
            }
        }
        let instance = placement.instance_guid.clone();
        let registered = self
            .registry
            .find(&instance)
            .await
            .map_err(|e| Error::Unavailable(Cause::Registry(e.to_string())))?;
        let denial = match &registered {
            None => Denial::NotRegistered {
                cell: cell.clone(),
                instance: instance.clone(),
            },
            Some(p) if p.cell_id != *cell => Denial::PlacedElsewhere {
                cell: cell.clone(),
                instance: instance.clone(),
                placed_on: p.cell_id.clone(),
            },
            Some(p) => return Ok(p.clone()),
        };
        let reason = match asked {
            Asked::Certificate => denial.to_string(),
            Asked::JwtSvid => format!("JWT-SVID: {denial}"),
        };
        let recorded = self
            .limits
            .as_ref()
            .is_none_or(|l| l.record_denial(cell, instance.as_str(), &reason, now_ms));
        if !recorded {
            return Err(Error::PermissionDenied(denial));
        }
        tracing::warn!(%cell, %instance, %reason, "issuance denied");
        // What the registry says about the instance, never what the cell claimed.
        let mut record = match &registered {
            Some(p) => denial_record(p, &reason, now),
            None => {
                let mut r = denial_record(&placement, &reason, now);
                (r.app_guid, r.space_guid, r.org_guid, r.container_ip) = (None, None, None, None);
                r
            }
        };
        record.cell_id = Some(cell.to_string());
        self.ledger.append(record).await.map_err(unavailable)?;
        Err(Error::PermissionDenied(denial))
    }

    /// Refuses, and records the refusal, when `p`'s app or cell is revoked.
    async fn refuse_revoked(&self, p: &Placement, now: OffsetDateTime) -> Result<(), Error> {
        let refusal = self
            .revoked()
            .and_then(|r| r.refusal(p.app_guid.as_str(), p.cell_id.as_str()));
        let Some(why) = refusal else { return Ok(()) };
        tracing::info!(instance = %p.instance_guid, %why, "issuance denied");
        self.ledger
            .append(denial_record(p, &why, now))
            .await
            .map_err(unavailable)?;
        Err(Error::PermissionDenied(Denial::Revoked(why)))
    }

    /// [`Authority::sign_jwt`] at an explicit time.
    pub async fn sign_jwt_at(
        &self,
        req: JwtRequest,
        now: OffsetDateTime,
    ) -> Result<SignedJwt, Error> {
        check_audience(&req.audience)?;
        self.issue_jwt(req, now).await
    }

    /// A JWT-SVID for a placement already checked, with an audience already checked,
    /// recorded before it is returned.
    async fn issue_jwt(&self, req: JwtRequest, now: OffsetDateTime) -> Result<SignedJwt, Error> {
        let Some(jwt) = &self.jwt else {
            return Err(unavailable(crate::jwt::keys::Error::NoActiveKey));
        };
        let p = &req.placement;
        self.refuse_revoked(p, now).await?;
        let subject = self
            .ca
            .settings()
            .id_template
            .render(&self.ca.settings().trust_domain, p.id_values())
            .map_err(|e| Error::Refused(ca::Error::from(e).into()))?;
        let issued = jwt
            .issue(subject.as_str(), req.audience, now)
            .map_err(unavailable)?;
        // Under its `jti`, which sorts by time as certificate serials do, so that the
        // serial index grows at its edge; the token's hash is in the details.
        let details = serde_json::json!({
            "audience": issued.claims.audience,
            "token_sha256": issued.token_sha256(),
        });
        let record = LedgerRecord {
            serial: Some(issued.claims.token_id.clone()),
            spiffe_id: Some(issued.claims.subject.clone()),
            not_before: Some(issued.claims.issued_at),
            not_after: Some(issued.claims.expires_at),
            issuer_fingerprint: Some(issued.kid.clone()),
            reason: Some(details.to_string()),
            ..placement_record(p, EntryKind::JwtSvid, now)
        };
        let seq = self.ledger.append(record).await.map_err(unavailable)?;
        Ok(SignedJwt {
            spiffe_id: issued.claims.subject,
            token: issued.token,
            expires_at: issued.claims.expires_at,
            ledger_seq: seq,
        })
    }

    /// A credential for `principal`, recorded in the ledger before it is returned.
    pub async fn enroll(
        &self,
        principal: &Principal,
        ttl: Ttl,
        now: OffsetDateTime,
    ) -> Result<Credential, Error> {
        if let Principal::Cell(cell) = principal {
            if let Some(why) = self.revoked().and_then(|r| r.cell_refusal(cell.as_str())) {
                return Err(Error::PermissionDenied(Denial::Revoked(why)));
            }
        }
        let cred = self
            .ca
            .issue_principal(principal, ttl, now)
            .map_err(request_or_unavailable)?;
        let record = principal_issued_record(&self.ca, principal, &cred.issued, now);
        self.ledger.append(record).await.map_err(unavailable)?;
        Ok(cred)
    }

    /// A new credential for `principal` from a CSR of its own, recorded in the ledger before
    /// it is returned; a refused CSR is recorded as a denial.
    pub async fn certify_principal(
        &self,
        principal: &Principal,
        csr: &[u8],
        ttl: Ttl,
        now: OffsetDateTime,
    ) -> Result<(Issued, i64), Error> {
        match self.ca.certify_principal(principal, csr, ttl, now) {
            Ok(issued) => {
                let record = principal_issued_record(&self.ca, principal, &issued, now);
                let seq = self.ledger.append(record).await.map_err(unavailable)?;
                Ok((issued, seq))
            }
            Err(e) if e.is_request_error() => {
                let reason = e.to_string();
                tracing::info!(principal = %principal.spiffe_id(self.ca.settings()), %reason,
                    "credential renewal denied");
                let record = LedgerRecord {
                    reason: Some(reason.clone()),
                    ..principal_record(&self.ca, principal, EntryKind::Denied, now)
                };
                self.ledger.append(record).await.map_err(unavailable)?;
                Err(Error::Refused(e.into()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// [`Authority::sign`] at an explicit time.
    pub async fn sign_at(
        &self,
        req: SignRequest,
        now: OffsetDateTime,
    ) -> Result<SignedCert, Error> {
        self.refuse_revoked(&req.placement, now).await?;
        let issued = if self.ca.signs_slowly() {
            let (ca, placement, csr) = (self.ca.clone(), req.placement.clone(), req.csr.clone());
            tokio::task::spawn_blocking(move || ca.issue(&placement, &csr, req.ttl, now))
                .await
                .map_err(|e| Error::Unavailable(Cause::SigningTask(Arc::new(e))))?
        } else {
            self.ca.issue(&req.placement, &req.csr, req.ttl, now)
        };
        match issued {
            Ok(issued) => {
                let record = issued_record(&req.placement, &issued, now);
                let seq = self.ledger.append(record).await.map_err(unavailable)?;
                if issued.validity.capped {
                    tracing::warn!(serial = %issued.serial_hex, not_after = %issued.validity.not_after,
                        "leaf lifetime capped at the issuing CA's expiry");
                }
                Ok(SignedCert::recorded(issued, seq))
            }
            Err(e) if e.is_request_error() || matches!(e, ca::Error::CaExpired(_)) => {
                let reason = e.to_string();
                tracing::info!(instance = %req.placement.instance_guid, %reason, "issuance denied");
                self.ledger
                    .append(denial_record(&req.placement, &reason, now))
                    .await
                    .map_err(unavailable)?;
                Err(if e.is_request_error() {
                    Error::Refused(e.into())
                } else {
                    Error::Unavailable(e.into())
                })
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

impl Authority for IssuanceService {
    async fn sign(&self, req: SignRequest) -> Result<SignedCert, Error> {
        self.sign_at(req, self.clock.now()).await
    }

    async fn sign_jwt(&self, req: JwtRequest) -> Result<SignedJwt, Error> {
        self.sign_jwt_at(req, self.clock.now()).await
    }

    async fn trust_bundle(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.ca.roots().iter().map(|r| r.der.clone()).collect())
    }
}

/// What a cell asked for, as its denial records it.
#[derive(Clone, Copy)]
enum Asked {
    Certificate,
    JwtSvid,
}

/// Refuses an audience list no JWT-SVID can carry.
fn check_audience(audience: &[String]) -> Result<(), Error> {
    crate::jwt::token::check_audience(audience).map_err(|e| Error::Refused(Cause::Audience(e)))
}

fn unavailable(e: impl Into<Cause>) -> Error {
    Error::Unavailable(e.into())
}

fn request_or_unavailable(e: ca::Error) -> Error {
    if e.is_request_error() {
        Error::Refused(e.into())
    } else {
        unavailable(e)
    }
}

/// The ledger record of a credential issued to `principal`.
fn principal_issued_record(
    ca: &CertificateAuthority,
    principal: &Principal,
    issued: &Issued,
    now: OffsetDateTime,
) -> LedgerRecord {
    with_issued(
        principal_record(ca, principal, EntryKind::Issued, now),
        issued,
    )
}

/// A ledger record about `principal`'s credential: its SPIFFE ID, and its cell for a cell.
fn principal_record(
    ca: &CertificateAuthority,
    principal: &Principal,
    kind: EntryKind,
    now: OffsetDateTime,
) -> LedgerRecord {
    LedgerRecord {
        spiffe_id: Some(principal.spiffe_id(ca.settings())),
        cell_id: match principal {
            Principal::Cell(cell) => Some(cell.to_string()),
            _ => None,
        },
        ..LedgerRecord::bare(kind, now)
    }
}

/// A record of `kind` about placement `p`.
pub(super) fn placement_record(
    p: &Placement,
    kind: EntryKind,
    now: OffsetDateTime,
) -> LedgerRecord {
    LedgerRecord {
        instance_guid: Some(p.instance_guid.to_string()),
        app_guid: Some(p.app_guid.to_string()),
        space_guid: p.space_guid.as_ref().map(|g| g.to_string()),
        org_guid: p.org_guid.as_ref().map(|g| g.to_string()),
        cell_id: Some(p.cell_id.to_string()),
        container_ip: p.container_ip.map(|ip| ip.to_string()),
        ..LedgerRecord::bare(kind, now)
    }
}

/// `record` with what it says about the certificate `issued`.
fn with_issued(record: LedgerRecord, issued: &Issued) -> LedgerRecord {
    LedgerRecord {
        serial: Some(issued.serial_hex.clone()),
        spiffe_id: Some(issued.spiffe_id.clone()),
        not_before: Some(issued.validity.not_before.unix_timestamp()),
        not_after: Some(issued.validity.not_after.unix_timestamp()),
        public_key_sha256: Some(issued.public_key_sha256.clone()),
        issuer_fingerprint: Some(issued.issuer_fingerprint.clone()),
        cert_der: Some(issued.cert_der.clone()),
        ..record
    }
}

fn issued_record(p: &Placement, issued: &Issued, now: OffsetDateTime) -> LedgerRecord {
    with_issued(placement_record(p, EntryKind::Issued, now), issued)
}

fn denial_record(p: &Placement, reason: &str, now: OffsetDateTime) -> LedgerRecord {
    LedgerRecord {
        reason: Some(reason.to_string()),
        ..placement_record(p, EntryKind::Denied, now)
    }
}
