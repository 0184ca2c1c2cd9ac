//! Carrying out rotation steps on the stored self-signed CA: making the new certificates,
//! storing state changes in one transaction, and swapping what the running CA signs with.

use std::sync::Arc;

use rcgen::Issuer;
use time::OffsetDateTime;

use super::bootstrap::{ca_params, new_hierarchy, signed_by, signing_from_records};
use super::rotation::{CaView, State, Step};
use super::{CaCert, CaKey, CertificateAuthority, Error, Kek, Mode, Role};
use crate::store::{CaChange, CaRecord, Store};

/// Something that happened to a CA certificate, for the ledger and the log.
#[derive(Clone, Debug)]
pub struct CaEvent {
    /// What happened, e.g. "root prepared".
    pub what: String,
    /// The certificate concerned.
    pub cert: CaCert,
}

/// Rotates the self-signed CA held in `store`.
pub struct Rotator {
    ca: Arc<CertificateAuthority>,
    store: Store,
    kek: Kek,
    /// What the stored CA looked like when last loaded, to notice another server's rotation.
    loaded: Vec<(String, String, Option<i64>)>,
}

/// Which CA to rotate on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A new intermediate under the active root, signing at once.
    Intermediate,
    /// A new root (and intermediate), signing once the sidecars have it.
    Root,
}

impl Rotator {
    /// A rotator for `ca`; `None` in upstream mode, whose CA comes from the operator's files.
    pub fn new(ca: Arc<CertificateAuthority>, store: Store) -> Result<Option<Rotator>, Error> {
        if !matches!(ca.settings().mode, Mode::SelfSigned) {
            return Ok(None);
        }
        let kek = Kek::load(&ca.settings().kek_file)?;
        Ok(Some(Rotator {
            ca,
            store,
            kek,
            loaded: Vec::new(),
        }))
    }

    /// The stored CA certificates as the schedule sees them.
    pub async fn views(&self) -> Result<Vec<CaView>, Error> {
        let records = self.store.ca_records().await?;
        views(&records)
    }

    /// Carries out `step` at `now` and returns what happened.
    pub async fn apply(&mut self, step: &Step, now: OffsetDateTime) -> Result<Vec<CaEvent>, Error> {
        const ACTIVATED: &str = "intermediate activated: new leaves are signed by it";
        let records = self.store.ca_records().await?;
        let find = |fp: &str| {
            records
                .iter()
                .find(|r| r.fingerprint == fp)
                .ok_or_else(|| Error::Inconsistent(format!("no CA certificate {fp}")))
        };
        let in_state = |role: Role, state: State| {
            records
                .iter()
                .filter(move |r| r.role == role.as_str() && r.state == state.as_str())
        };
        let mut plan = Plan {
            at: now.unix_timestamp(),
            new: Vec::new(),
            changes: Vec::new(),
            events: Vec::new(),
        };
        match step {
            Step::PrepareIntermediate => {
                let root = in_state(Role::Root, State::Active)
                    .next_back()
                    .ok_or_else(|| Error::Inconsistent("no active root".into()))?;
                plan.new.push(self.intermediate_under(root, now)?);
            }
            Step::ActivateIntermediate { intermediate } => {
                for old in in_state(Role::Intermediate, State::Active) {
                    plan.retire(old, "intermediate retired")?;
                }
                plan.activate(find(intermediate)?, ACTIVATED)?;
            }
            Step::PrepareRoot => {
                // A prepared pair that never signed is superseded by the new one.
                for stale in in_state(Role::Root, State::Prepared)
                    .chain(in_state(Role::Intermediate, State::Prepared))
                {
                    plan.retire(stale, "superseded before it signed")?;
                }
                let h = new_hierarchy(self.ca.settings(), "idmint", now)?;
                plan.new
                    .push(self.record(Role::Root, h.root_der, &h.root_key, now)?);
                plan.new
                    .push(self.record(Role::Intermediate, h.inter_der, &h.inter_key, now)?);
            }
            Step::ActivateRoot {
                root,
                intermediate,
                without_every_ack,
            } => {
                for old in in_state(Role::Root, State::Active) {
                    plan.retire(
                        old,
                        "root retired: stays in the trust bundle until its last leaf expires",
                    )?;
                }
                for old in in_state(Role::Intermediate, State::Active) {
                    plan.retire(old, "intermediate retired")?;
                }
                let why = if *without_every_ack {
                    "root activated after the maximum wait, before every sidecar acknowledged it"
                } else {
                    "root activated: every connected sidecar has it"
                };
                plan.activate(find(root)?, why)?;
                plan.activate(find(intermediate)?, ACTIVATED)?;
            }
            Step::PruneRoot { root } => {
                let r = find(root)?;
                plan.changes.push(CaChange {
                    pruned_at: Some(plan.at),
                    ..change(r, None)
                });
                plan.events.push(event(
                    r,
                    "root pruned from the trust bundle: every leaf under it has expired",
                )?);
            }
        }
        for r in &plan.new {
            let what = match r.role.as_str() {
                "root" => "root prepared: in the trust bundle, signing once the sidecars have it",
                _ => "intermediate prepared",
            };
            plan.events.push(event(r, what)?);
        }
        let now_ms = crate::clock::unix_ms(now);
        // The step and its ledger records commit together: no CA change goes unrecorded.
        let records: Vec<_> = plan
            .events
            .iter()
            .map(|e| {
                let mut r = super::maintenance::ca_record(e, now);
                r.leaf_hash = crate::ledger::leaf_hash(&r);
                r
            })
            .collect();
        self.store
            .apply_ca_changes(&plan.new, &plan.changes, &records, now_ms)
            .await?;
        self.reload().await?;
        Ok(plan.events)
    }

    /// Reads the stored CA again and swaps it into the running one.
    pub async fn reload(&mut self) -> Result<(), Error> {
        let records = self.store.ca_records().await?;
        self.ca.replace(signing_from_records(&records, &self.kek)?);
        self.loaded = shape(&records);
        Ok(())
    }

    /// Reloads when the stored CA differs from what was loaded last (another server rotated
    /// it); returns whether it did.
    pub async fn reload_if_changed(&mut self) -> Result<bool, Error> {
        let records = self.store.ca_records().await?;
        if shape(&records) == self.loaded {
            return Ok(false);
        }
        self.ca.replace(signing_from_records(&records, &self.kek)?);
        self.loaded = shape(&records);
        Ok(true)
    }

    fn intermediate_under(&self, root: &CaRecord, now: OffsetDateTime) -> Result<CaRecord, Error> {
        let sealed = root
            .sealed_key
            .as_ref()
            .ok_or_else(|| Error::Inconsistent("the active root has no stored key".into()))?;
        let root_key = CaKey::from_pkcs8(&self.kek.open(root.fingerprint.as_bytes(), sealed)?)?;
        let root_cert = CaCert::from_der(Role::Root, &root.cert_der)?;
        let issuer = Issuer::from_ca_cert_der(&root.cert_der.as_slice().into(), &root_key)?;
        let settings = self.ca.settings();
        let end = (now + settings.intermediate_ttl.duration()).min(root_cert.not_after);
        let params = ca_params(settings, "idmint", Role::Intermediate, now, end)?;
        let key = CaKey::generate_p256()?;
        let der = params.signed_by(&key, &issuer)?.der().to_vec();
        self.record(Role::Intermediate, der, &key, now)
    }

    fn record(
        &self,
        role: Role,
        der: Vec<u8>,
        key: &CaKey,
        now: OffsetDateTime,
    ) -> Result<CaRecord, Error> {
        let cert = CaCert::from_der(role, &der)?;
        let pkcs8 = key.pkcs8_der().expect("generated keys keep their PKCS#8");
        Ok(CaRecord {
            role: role.as_str().into(),
            state: State::Prepared.as_str().into(),
            sealed_key: Some(self.kek.seal(cert.fingerprint.as_bytes(), pkcs8)?),
            fingerprint: cert.fingerprint,
            not_before: cert.not_before.unix_timestamp(),
            not_after: cert.not_after.unix_timestamp(),
            created_at: now.unix_timestamp(),
            activated_at: None,
            retired_at: None,
            pruned_at: None,
            cert_der: der,
        })
    }
}

/// What one rotation step writes.
struct Plan {
    at: i64,
    new: Vec<CaRecord>,
    changes: Vec<CaChange>,
    events: Vec<CaEvent>,
}

impl Plan {
    fn retire(&mut self, r: &CaRecord, what: &str) -> Result<(), Error> {
        self.changes.push(CaChange {
            retired_at: Some(self.at),
            ..change(r, Some(State::Retired))
        });
        self.events.push(event(r, what)?);
        Ok(())
    }

    fn activate(&mut self, r: &CaRecord, what: &str) -> Result<(), Error> {
        self.changes.push(CaChange {
            activated_at: Some(self.at),
            ..change(r, Some(State::Active))
        });
        self.events.push(event(r, what)?);
        Ok(())
    }
}

/// What decides the CA in use: each certificate's fingerprint, state and pruning.
fn shape(records: &[CaRecord]) -> Vec<(String, String, Option<i64>)> {
    records
        .iter()
        .map(|r| (r.fingerprint.clone(), r.state.clone(), r.pruned_at))
        .collect()
}

fn change(r: &CaRecord, state: Option<State>) -> CaChange {
    CaChange {
        fingerprint: r.fingerprint.clone(),
        state: state.map(State::as_str),
        activated_at: None,
        retired_at: None,
        pruned_at: None,
    }
}

fn event(r: &CaRecord, what: &str) -> Result<CaEvent, Error> {
    let role = if r.role == "root" {
        Role::Root
    } else {
        Role::Intermediate
    };
    Ok(CaEvent {
        what: what.to_string(),
        cert: CaCert::from_der(role, &r.cert_der)?,
    })
}

/// The stored rows as the schedule sees them; an intermediate's parent is the root whose key
/// verifies its signature.
pub fn views(records: &[CaRecord]) -> Result<Vec<CaView>, Error> {
    let time = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| Error::Inconsistent(format!("CA timestamp {t} out of range")))
    };
    let roots: Vec<CaCert> = records
        .iter()
        .filter(|r| r.role == "root")
        .map(|r| CaCert::from_der(Role::Root, &r.cert_der))
        .collect::<Result<_, _>>()?;
    records
        .iter()
        .map(|r| {
            let role = match r.role.as_str() {
                "root" => Role::Root,
                _ => Role::Intermediate,
            };
            let parent = if role == Role::Intermediate {
                let cert = CaCert::from_der(role, &r.cert_der)?;
                roots
                    .iter()
                    .find(|root| signed_by(&cert, root))
                    .map(|root| root.fingerprint.clone())
            } else {
                None
            };
            Ok(CaView {
                role,
                state: State::parse(&r.state)
                    .ok_or_else(|| Error::Inconsistent(format!("CA state {:?}", r.state)))?,
                fingerprint: r.fingerprint.clone(),
                parent,
                not_before: time(r.not_before)?,
                not_after: time(r.not_after)?,
                created_at: time(r.created_at)?,
                retired_at: r.retired_at.map(time).transpose()?,
                pruned_at: r.pruned_at.map(time).transpose()?,
            })
        })
        .collect()
}
