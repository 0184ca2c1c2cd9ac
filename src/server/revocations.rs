//! Revocation: taking certificates back before they expire. A revocation is recorded in the
//! ledger with who asked, then stored; every server then lists the revoked certificates in
//! one CRL per issuing intermediate, which goes out with the trust bundle to every sidecar.
//! A revoked app or cell gets no certificate any more, and a revoked credential is refused.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::ca::crl::{self, Reason};
use crate::ca::{CaCert, CaKey, CertificateAuthority, Kek, Role};
use crate::clock::{unix_ms, Clock};
use crate::ids::{CellId, Guid};
use crate::ledger::Ledger;
use crate::server::Registry;
use crate::store::{
    EntryKind, LedgerEntry, LedgerFilter, LedgerRecord, RevokedCert, RevokedSubject, Store,
};

/// How long a CRL is valid: a sidecar cut off from its agent keeps verifying peers this long.
const CRL_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// CRLs are signed again once this old, well before they lapse.
const CRL_REFRESH: Duration = Duration::from_secs(3600);
/// How far back `thisUpdate` is set, for peers whose clocks run slightly behind.
const BACKDATE: Duration = Duration::from_secs(60);
/// How often the CRLs' age is looked at without a change.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// What to revoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One certificate, by serial.
    Serial(String),
    /// Every live certificate of one instance; its agent gets a new one at once.
    Instance(Guid),
    /// Every live certificate of an app, and every certificate it would get.
    App(Guid),
    /// Every live certificate issued on a cell (its own credential too), and every one after.
    Cell(CellId),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Serial(s) => write!(f, "certificate {s}"),
            Target::Instance(i) => write!(f, "instance {i}"),
            Target::App(a) => write!(f, "app {a}"),
            Target::Cell(c) => write!(f, "cell {c}"),
        }
    }
}

/// What a revocation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// The certificates revoked by this request (not those revoked before).
    pub revoked: Vec<String>,
    /// Whether the app or cell was newly refused (`None` for a serial or an instance).
    pub newly_refused: Option<bool>,
    /// The ledger entry that records it, when anything changed.
    pub ledger_seq: Option<i64>,
}

/// Why a revocation was not made.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No certificate of that serial or instance was ever issued here.
    #[error("{0}")]
    Unknown(String),
    /// The certificate has expired: there is nothing left to revoke.
    #[error("{0}")]
    Expired(String),
    /// The ledger or the store could not be reached; nothing was revoked.
    #[error("{0}")]
    Unavailable(String),
}

/// One intermediate's CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    /// SHA-256 (hex) of the intermediate.
    pub issuer_fingerprint: String,
    /// The CRL, DER.
    pub der: Vec<u8>,
}

/// What is revoked now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Revoked certificates that have not expired.
    pub serials: BTreeSet<String>,
    /// Apps refused every certificate.
    pub apps: HashSet<String>,
    /// Cells refused every certificate, their own credential included.
    pub cells: HashSet<String>,
    /// One CRL per intermediate whose key this server holds and that has not expired.
    pub crls: Vec<Crl>,
    /// The same CRLs, PEM, concatenated, while any certificate is revoked: what validation
    /// contexts carry. Empty otherwise, so that sidecars check no CRL while there is nothing
    /// to refuse.
    pub crls_pem: String,
    /// When the CRLs were signed.
    pub signed_at: Option<OffsetDateTime>,
    /// The intermediates (SHA-256, hex) they were signed for.
    pub signers: BTreeSet<String>,
}

impl Revoked {
    /// Why a certificate for `app` on `cell` is refused, when it is.
    pub fn refusal(&self, app: &str, cell: &str) -> Option<String> {
        if self.apps.contains(app) {
            Some(format!("app {app} is revoked: it gets no certificate"))
        } else {
            self.cell_refusal(cell)
        }
    }

    /// Why `cell` gets no certificate, when it is revoked.
    pub fn cell_refusal(&self, cell: &str) -> Option<String> {
        self.cells
            .contains(cell)
            .then(|| format!("cell {cell} is revoked: it gets no certificate"))
    }

    /// Why a caller presenting the credential with `serial`, issued to `cell` when it is a
    /// cell's, is refused, when it is: the server API and the admin API ask alike.
    pub fn credential_refusal(&self, serial: &str, cell: Option<&str>) -> Option<String> {
        if self.serials.contains(serial) {
            return Some(format!(
                "this credential (serial {serial}) is revoked; enrol again"
            ));
        }
        let cell = cell.filter(|c| self.cells.contains(*c))?;
        Some(format!("cell {cell} is revoked: its credential is refused"))
    }
}

/// The revocations of one server: see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Revocations(Arc<Inner>);

struct Inner {
    store: Store,
    ca: Arc<CertificateAuthority>,
    kek: Arc<Kek>,
    ledger: Ledger,
    registry: Registry,
    clock: Clock,
    state: watch::Sender<Arc<Revoked>>,
    /// Woken when another server revoked something.
    changed: Arc<Notify>,
    /// Every intermediate whose key this process holds, by fingerprint: those in the store,
    /// and in upstream mode those it signed with since it started.
    signers: Mutex<BTreeMap<String, (CaCert, Arc<CaKey>)>>,
    /// One rebuild at a time, so CRLs are published in the order they were made.
    rebuilding: tokio::sync::Mutex<()>,
}

impl Revocations {
    /// Loads what is revoked and signs the CRLs.
    pub async fn load(
        store: Store,
        ca: Arc<CertificateAuthority>,
        kek: Arc<Kek>,
        (ledger, registry): (Ledger, Registry),
        clock: Clock,
    ) -> anyhow::Result<Revocations> {
        let r = Revocations(Arc::new(Inner {
            store,
            ca,
            kek,
            ledger,
            registry,
            clock,
            state: watch::Sender::new(Arc::default()),
            changed: Arc::default(),
            signers: Mutex::default(),
            rebuilding: tokio::sync::Mutex::new(()),
        }));
        r.rebuild().await?;
        Ok(r)
    }

    /// What is revoked now, as it changes.
    pub fn watch(&self) -> watch::Receiver<Arc<Revoked>> {
        self.0.state.subscribe()
    }

    /// What is revoked now.
    pub fn now(&self) -> Arc<Revoked> {
        self.0.state.borrow().clone()
    }

    /// Woken by the change feed when another server revoked something.
    pub fn changed(&self) -> Arc<Notify> {
        self.0.changed.clone()
    }

    /// Revokes `target` for `reason` at `by`'s request: recorded in the ledger, then stored,
    /// then published. Revoking what is revoked already changes nothing and records nothing.
    pub async fn revoke(
        &self,
        target: &Target,
        reason: Reason,
        by: &str,
    ) -> Result<Outcome, RevokeError> {
        let inner = &self.0;
        let now = inner.clock.now();
        let live = self.live_certificates(target, now).await?;
        let subject = match target {
            Target::App(app) => Some(("app", app.to_string())),
            Target::Cell(cell) => Some(("cell", cell.to_string())),
            _ => None,
        };
        let state = self.now();
        let refused_already = subject.as_ref().map(|(kind, s)| match *kind {
            "app" => state.apps.contains(s),
            _ => state.cells.contains(s),
        });
        let fresh: Vec<&LedgerEntry> = live
            .iter()
            .filter(|e| {
                !state
                    .serials
                    .contains(e.record.serial.as_deref().unwrap_or(""))
            })
            .collect();
        if fresh.is_empty() && refused_already != Some(false) {
            return Ok(Outcome {
                newly_refused: refused_already.map(|_| false),
                ..Outcome::default()
            });
        }
        let serials: Vec<String> = fresh
            .iter()
            .filter_map(|e| e.record.serial.clone())
            .collect();
        let record = revocation_record(target, &live, reason, by, &serials, now);
        let seq =
            inner.ledger.append(record).await.map_err(|e| {
                RevokeError::Unavailable(format!("cannot record the revocation: {e}"))
            })?;
        let at_ms = unix_ms(now);
        let certs: Vec<RevokedCert> = fresh
            .iter()
            .filter_map(|e| {
                Some(RevokedCert {
                    serial: e.record.serial.clone()?,
                    issuer_fingerprint: e.record.issuer_fingerprint.clone()?,
                    not_after: e.record.not_after?,
                    revoked_at_ms: at_ms,
                    reason: reason.name().to_string(),
                    requested_by: by.to_string(),
                })
            })
            .collect();
        let subject = subject.map(|(kind, subject)| RevokedSubject {
            kind: kind.to_string(),
            subject,
            revoked_at_ms: at_ms,
            reason: reason.name().to_string(),
            requested_by: by.to_string(),
        });
        let (_, newly_refused) =
            inner
                .store
                .revoke(&certs, subject.as_ref())
                .await
                .map_err(|e| {
                    RevokeError::Unavailable(format!(
                    "the revocation is recorded (ledger entry {seq}) but could not be stored: {e}; \
                     revoke again to apply it"
                ))
                })?;
        if let Err(e) = self.rebuild().await {
            tracing::error!(error = %e, "revoked, but the CRLs could not be signed again; retrying");
            inner.changed.notify_one();
        }
        tracing::warn!(%target, reason = reason.name(), %by, certificates = serials.len(), "revoked");
        Ok(Outcome {
            revoked: serials,
            newly_refused: subject.as_ref().map(|_| newly_refused),
            ledger_seq: Some(seq),
        })
    }

    /// The issued certificates `target` covers that have not expired (revoked or not), or why
    /// there is nothing to revoke.
    async fn live_certificates(
        &self,
        target: &Target,
        now: OffsetDateTime,
    ) -> Result<Vec<LedgerEntry>, RevokeError> {
        let store = &self.0.store;
        let unavailable = |e: crate::store::Error| {
            RevokeError::Unavailable(format!("cannot read the ledger: {e}"))
        };
        let issued = |filter: LedgerFilter| async move {
            let entries = store.ledger_entries(&filter).await.map_err(unavailable)?;
            Ok::<_, RevokeError>(
                entries
                    .into_iter()
                    .filter(|e| e.record.kind == EntryKind::Issued)
                    .collect::<Vec<_>>(),
            )
        };
        let unix = now.unix_timestamp();
        let still_valid = |e: &LedgerEntry| e.record.not_after.is_some_and(|t| t > unix);
        match target {
            Target::Serial(serial) => {
                let found = issued(LedgerFilter {
                    serial: Some(serial.clone()),
                    ..LedgerFilter::default()
                })
                .await?;
                let Some(entry) = found.into_iter().next() else {
                    return Err(RevokeError::Unknown(format!(
                        "no certificate with serial {serial} was issued by this CA"
                    )));
                };
                if !still_valid(&entry) {
                    return Err(RevokeError::Expired(format!(
                        "certificate {serial} has expired: there is nothing to revoke"
                    )));
                }
                Ok(vec![entry])
            }
            Target::Instance(instance) => {
                // Through its app's index when it is registered: an index of its own would
                // cost every issuance a random write.
                let placed = self.0.registry.find(instance).await.map_err(|e| {
                    RevokeError::Unavailable(format!("cannot read the registry: {e}"))
                })?;
                let all = issued(LedgerFilter {
                    instance_guid: Some(instance.to_string()),
                    app_guid: placed.map(|p| p.app_guid.to_string()),
                    ..LedgerFilter::default()
                })
                .await?;
                if all.is_empty() {
                    return Err(RevokeError::Unknown(format!(
                        "no certificate was ever issued to instance {instance}"
                    )));
                }
                Ok(all.into_iter().filter(still_valid).collect())
            }
            Target::App(_) | Target::Cell(_) => {
                let (app_guid, cell_id) = match target {
                    Target::App(app) => (Some(app.to_string()), None),
                    Target::Cell(cell) => (None, Some(cell.to_string())),
                    _ => (None, None),
                };
                let live = issued(LedgerFilter {
                    app_guid,
                    cell_id,
                    valid_at: Some(unix),
                    ..LedgerFilter::default()
                })
                .await?;
                Ok(live.into_iter().filter(still_valid).collect())
            }
        }
    }

    /// Reads what is revoked and publishes it, signing the CRLs again when what they list or
    /// who signs them changed, or when they have aged.
    async fn rebuild(&self) -> anyhow::Result<()> {
        let inner = &self.0;
        let _one = inner.rebuilding.lock().await;
        let now = inner.clock.now();
        let certs = inner.store.revoked_certs(now.unix_timestamp()).await?;
        let subjects = inner.store.revoked_subjects().await?;
        self.learn_signers(now).await?;
        let signers = inner
            .signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let before = self.now();
        let serials: BTreeSet<String> = certs.iter().map(|c| c.serial.clone()).collect();
        let signer_ids: BTreeSet<String> = signers.keys().cloned().collect();
        let aged = before.signed_at.is_none_or(|at| now - at >= CRL_REFRESH);
        let same_signers = before.signers == signer_ids;
        let crls = if serials == before.serials && same_signers && !aged {
            before.crls.clone()
        } else {
            sign_crls(&signers, &certs, now)
        };
        let signed_at = if crls == before.crls {
            before.signed_at
        } else {
            Some(now)
        };
        let mut apps = HashSet::new();
        let mut cells = HashSet::new();
        for s in subjects {
            match s.kind.as_str() {
                "app" => apps.insert(s.subject),
                _ => cells.insert(s.subject),
            };
        }
        let next = Revoked {
            serials,
            apps,
            cells,
            crls_pem: if certs.is_empty() {
                String::new()
            } else {
                crls.iter().map(|c| crl::pem(&c.der)).collect()
            },
            crls,
            signed_at,
            signers: signer_ids,
        };
        inner.state.send_if_modified(|current| {
            let changed = **current != next;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
        Ok(())
    }

    /// Adds the intermediates whose keys this process holds now and drops expired ones.
    async fn learn_signers(&self, now: OffsetDateTime) -> anyhow::Result<()> {
        let inner = &self.0;
        let records = inner.store.ca_records().await?;
        let mut found = Vec::new();
        {
            let known = inner.signers.lock().unwrap_or_else(|e| e.into_inner());
            for r in &records {
                let Some(sealed) = &r.sealed_key else {
                    continue;
                };
                if r.role != "intermediate" || known.contains_key(&r.fingerprint) {
                    continue;
                }
                if r.not_after <= now.unix_timestamp() {
                    continue;
                }
                found.push((r.fingerprint.clone(), r.cert_der.clone(), sealed.clone()));
            }
        }
        let mut opened = Vec::new();
        for (fingerprint, der, sealed) in found {
            let pkcs8 = inner.kek.open(fingerprint.as_bytes(), &sealed)?;
            let key = CaKey::from_pkcs8(&pkcs8)?;
            opened.push((
                fingerprint,
                CaCert::from_der(Role::Intermediate, &der)?,
                key,
            ));
        }
        let signing = inner.ca.signing();
        let mut known = inner.signers.lock().unwrap_or_else(|e| e.into_inner());
        for (fingerprint, cert, key) in opened {
            known.insert(fingerprint, (cert, Arc::new(key)));
        }
        let current = &signing.chain[0];
        known
            .entry(current.fingerprint.clone())
            .or_insert_with(|| (current.clone(), signing.key.clone()));
        known.retain(|_, (cert, _)| cert.not_after > now);
        Ok(())
    }

    /// Keeps the CRLs current until `stop`: after another server's revocation, after a CA
    /// change, and before they age.
    pub async fn run(self, stop: CancellationToken) {
        let mut ca = self.0.ca.watch();
        let changed = self.0.changed.clone();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
                Ok(()) = ca.changed() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            match self.rebuild().await {
                Ok(()) if std::mem::take(&mut failing) => {
                    tracing::info!("the CRLs are current again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::error!(error = %e, "cannot bring the CRLs up to date; retrying");
                    }
                }
            }
        }
    }
}

/// One CRL per intermediate in `signers`, each listing the certificates in `certs` it issued.
/// An intermediate that cannot sign a CRL (an upstream one without cRLSign) gets none, said
/// loudly: while anything is revoked, sidecars refuse the certificates it issued.
fn sign_crls(
    signers: &BTreeMap<String, (CaCert, Arc<CaKey>)>,
    certs: &[RevokedCert],
    now: OffsetDateTime,
) -> Vec<Crl> {
    let lifetime = (now - BACKDATE, now + CRL_LIFETIME);
    let number = u64::try_from(unix_ms(now)).unwrap_or_default();
    let orphans = certs
        .iter()
        .filter(|c| !signers.contains_key(&c.issuer_fingerprint))
        .count();
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "revoked certificates whose issuer's key this server does not hold are in no CRL"
        );
    }
    let mut crls = Vec::with_capacity(signers.len());
    for (fingerprint, (cert, key)) in signers {
        let listed: Vec<&RevokedCert> = certs
            .iter()
            .filter(|c| c.issuer_fingerprint == *fingerprint)
            .collect();
        match crl::sign(cert, key, &listed, lifetime, number) {
            Ok(der) => crls.push(Crl {
                issuer_fingerprint: fingerprint.clone(),
                der,
            }),
            Err(e) => tracing::error!(issuer = %cert.subject, error = %e,
                "this intermediate cannot sign a CRL; while anything is revoked, sidecars refuse what it issued"),
        }
    }
    crls
}

/// The ledger record of a revocation: what was asked, why, by whom, and which certificates it
/// took back.
fn revocation_record(
    target: &Target,
    live: &[LedgerEntry],
    reason: Reason,
    by: &str,
    serials: &[String],
    now: OffsetDateTime,
) -> LedgerRecord {
    let first = live.first().map(|e| &e.record);
    let from_first = |f: fn(&LedgerRecord) -> &Option<String>| first.and_then(|r| f(r).clone());
    let (instance_guid, app_guid, cell_id) = match target {
        Target::Serial(_) => (
            from_first(|r| &r.instance_guid),
            from_first(|r| &r.app_guid),
            from_first(|r| &r.cell_id),
        ),
        Target::Instance(i) => (
            Some(i.to_string()),
            from_first(|r| &r.app_guid),
            from_first(|r| &r.cell_id),
        ),
        Target::App(a) => (None, Some(a.to_string()), None),
        Target::Cell(c) => (None, None, Some(c.to_string())),
    };
    let listed = if serials.is_empty() {
        "no live certificate".to_string()
    } else {
        format!("certificates {}", serials.join(", "))
    };
    LedgerRecord {
        instance_guid,
        app_guid,
        cell_id,
        spiffe_id: match target {
            Target::Serial(_) => from_first(|r| &r.spiffe_id),
            _ => None,
        },
        reason: Some(format!(
            "{target} revoked ({}) at the request of {by}: {listed}",
            reason.name()
        )),
        ..LedgerRecord::bare(EntryKind::Revocation, now)
    }
}
