//! The keys that sign JWT-SVIDs and their rotation, which follows the intermediate's: a new
//! key is published well before it signs, and a replaced key stays published until the last
//! token it signed has expired.
//!
//! Every server sharing a database runs the same schedule; a step is written only if the keys
//! are still as the server last read them, so two servers never both make a key.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::jwks::Jwk;
use super::token::{Claims, SigningKey};
use crate::ca::{rotation::State, Kek};
use crate::clock::{unix_ms, Clock};
use crate::ids::Ttl;
use crate::store::{EntryKind, JwtKeyChange, JwtKeyRecord, LedgerRecord, Store};

/// Share of a key's signing time after which its successor is published.
pub const PREPARE_AT: f64 = 5.0 / 6.0;
/// How often the schedule and the stored keys are looked at.
const TICK: Duration = Duration::from_secs(2);

/// How JWT-SVIDs and their keys live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A token's lifetime (`exp` − `iat`).
    pub svid_ttl: Ttl,
    /// How long a key signs before its successor takes over.
    pub key_ttl: Ttl,
    /// How far relying parties' clocks may lag ours: a retired key stays published this much
    /// longer.
    pub clock_skew: Duration,
}

/// Why no token, or no key change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no JWT-SVID signing key is active yet; try again shortly")]
    NoActiveKey,
    #[error("JWT signing key: {0}")]
    Key(String),
    #[error("a stored JWT signing key cannot be opened: {0}")]
    Sealed(#[from] crate::ca::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// What the schedule needs to know about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    pub kid: String,
    pub state: State,
    pub created_at_ms: i64,
    pub activated_at_ms: Option<i64>,
    pub retired_at_ms: Option<i64>,
}

/// A step of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a key: published at once, and signing at once when `active` (there is none).
    Create { active: bool },
    /// The prepared key signs from now; the one it replaces retires.
    Activate { kid: String, retire: Option<String> },
    /// Every token the retired key signed has expired: it leaves the bundle, and its private
    /// key is wiped.
    Drop { kid: String },
}

/// The steps due at `now_ms`.
pub fn due(keys: &[KeyView], now_ms: i64, s: &Settings) -> Vec<Step> {
    let ms = |d: Duration| d.as_millis() as i64;
    let in_state = |state| keys.iter().find(|k| k.state == state);
    let mut steps = Vec::new();
    match (in_state(State::Active), in_state(State::Prepared)) {
        (None, None) => steps.push(Step::Create { active: true }),
        (None, Some(p)) => steps.push(Step::Activate {
            kid: p.kid.clone(),
            retire: None,
        }),
        (Some(a), prepared) => {
            let since = a.activated_at_ms.unwrap_or(a.created_at_ms);
            let life = ms(s.key_ttl.duration());
            match prepared {
                None if now_ms >= since + (life as f64 * PREPARE_AT) as i64 => {
                    steps.push(Step::Create { active: false })
                }
                Some(p) if now_ms >= since + life => steps.push(Step::Activate {
                    kid: p.kid.clone(),
                    retire: Some(a.kid.clone()),
                }),
                _ => {}
            }
        }
    }
    let keep = ms(s.svid_ttl.duration()) + ms(s.clock_skew);
    for k in keys.iter().filter(|k| k.state == State::Retired) {
        if now_ms >= k.retired_at_ms.unwrap_or(k.created_at_ms) + keep {
            steps.push(Step::Drop { kid: k.kid.clone() });
        }
    }
    steps
}

/// The keys loaded at one moment.
pub struct KeySet {
    /// The key that signs now.
    pub signer: Option<Arc<SigningKey>>,
    /// Every published key: prepared, active and retired.
    pub published: Vec<Jwk>,
    /// Each stored key's ID and state, as read.
    seen: Vec<(String, String)>,
}

/// A JWT-SVID just signed, with what the ledger records about it.
#[derive(Clone, Debug)]
pub struct IssuedJwt {
    /// The token, compact serialization.
    pub token: String,
    /// What it says.
    pub claims: Claims,
    /// The key that signed it.
    pub kid: String,
}

impl IssuedJwt {
    /// The SHA-256 (hex) of the token: how the ledger names it without holding it.
    pub fn token_sha256(&self) -> String {
        crate::ca::sha256_hex(self.token.as_bytes())
    }
}

/// The JWT signing keys in use, kept to the schedule.
pub struct JwtKeys {
    settings: Settings,
    current: RwLock<Arc<KeySet>>,
    changed: watch::Sender<u64>,
    store: Store,
    kek: Arc<Kek>,
    clock: Clock,
}

impl JwtKeys {
    /// The stored keys, after any step due now (the first key is made on the first start).
    pub async fn load(
        settings: Settings,
        store: Store,
        kek: Arc<Kek>,
        clock: Clock,
    ) -> Result<Arc<JwtKeys>, Error> {
        let keys = Arc::new(JwtKeys {
            settings,
            current: RwLock::new(Arc::new(KeySet {
                signer: None,
                published: Vec::new(),
                seen: Vec::new(),
            })),
            changed: watch::Sender::new(0),
            store,
            kek,
            clock,
        });
        keys.maintain().await?;
        Ok(keys)
    }

    /// The settings tokens are issued with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The keys now.
    pub fn now(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever the published keys do.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A token for `subject` and `audience`, issued at `now`.
    pub fn issue(
        &self,
        subject: &str,
        audience: Vec<String>,
        now: OffsetDateTime,
    ) -> Result<IssuedJwt, Error> {
        let signer = self.now().signer.clone().ok_or(Error::NoActiveKey)?;
        let issued_at = now.unix_timestamp();
        let claims = Claims {
            subject: subject.to_string(),
            audience,
            expires_at: issued_at + self.settings.svid_ttl.as_secs() as i64,
            issued_at,
            token_id: crate::ca::time_ordered_id(now).map_err(|e| Error::Key(e.to_string()))?,
        };
        let token = signer.sign(&claims).map_err(Error::Key)?;
        Ok(IssuedJwt {
            token,
            claims,
            kid: signer.kid().to_string(),
        })
    }

    /// Reads the stored keys, takes any step due, and publishes what changed.
    pub async fn maintain(&self) -> Result<(), Error> {
        let now = self.clock.now();
        let now_ms = unix_ms(now);
        let mut records = self.store.jwt_keys().await?;
        let steps = due(&views(&records), now_ms, &self.settings);
        if !steps.is_empty() {
            let (changes, events) = self.plan(&steps, now)?;
            // The changes and their ledger records commit together.
            let events: Vec<LedgerRecord> = events
                .into_iter()
                .map(|mut r| {
                    r.leaf_hash = crate::ledger::leaf_hash(&r);
                    r
                })
                .collect();
            let read = seen(&records);
            self.store
                .change_jwt_keys(&read, &changes, &events, now_ms)
                .await?;
            records = self.store.jwt_keys().await?;
        }
        if self.now().seen != seen(&records) {
            let set = self.open(&records)?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
            self.changed.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Keeps to the schedule, and takes up other servers' changes, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            match self.maintain().await {
                Ok(()) => failing = false,
                Err(e) if !std::mem::replace(&mut failing, true) => {
                    tracing::error!(error = %e, "JWT signing keys: cannot keep to the schedule; will retry");
                }
                Err(_) => {}
            }
        }
    }

    fn plan(
        &self,
        steps: &[Step],
        now: OffsetDateTime,
    ) -> Result<(Vec<JwtKeyChange>, Vec<LedgerRecord>), Error> {
        let now_ms = unix_ms(now);
        let (mut changes, mut events) = (Vec::new(), Vec::new());
        let event = |kid: &str, what: String| LedgerRecord {
            issuer_fingerprint: Some(kid.to_string()),
            reason: Some(what),
            ..LedgerRecord::bare(EntryKind::Ca, now)
        };
        for step in steps {
            match step {
                Step::Create { active } => {
                    let (key, pkcs8) = SigningKey::generate().map_err(Error::Key)?;
                    let kid = key.kid().to_string();
                    let point = match key.public().key {
                        super::jwks::JwkKey::Ec { point, .. } => point,
                        super::jwks::JwkKey::Rsa { .. } => unreachable!("ES256 keys are EC"),
                    };
                    let state = if *active {
                        State::Active
                    } else {
                        State::Prepared
                    };
                    changes.push(JwtKeyChange::Insert(JwtKeyRecord {
                        kid: kid.clone(),
                        state: state.as_str().into(),
                        public_point: point,
                        sealed_key: self.kek.seal(&seal_context(&kid), &pkcs8)?,
                        created_at_ms: now_ms,
                        activated_at_ms: active.then_some(now_ms),
                        retired_at_ms: None,
                        removed_at_ms: None,
                    }));
                    events.push(event(
                        &kid,
                        if *active {
                            format!("JWT-SVID signing key {kid} made and signing")
                        } else {
                            format!("JWT-SVID signing key {kid} prepared: published, signing later")
                        },
                    ));
                }
                Step::Activate { kid, retire } => {
                    changes.push(JwtKeyChange::Set {
                        kid: kid.clone(),
                        state: State::Active.as_str(),
                        at_ms: now_ms,
                    });
                    events.push(event(kid, format!("JWT-SVID signing key {kid} signs")));
                    if let Some(old) = retire {
                        changes.push(JwtKeyChange::Set {
                            kid: old.clone(),
                            state: State::Retired.as_str(),
                            at_ms: now_ms,
                        });
                        events.push(event(
                            old,
                            format!("JWT-SVID signing key {old} retired: published until its tokens expire"),
                        ));
                    }
                }
                Step::Drop { kid } => {
                    changes.push(JwtKeyChange::Remove {
                        kid: kid.clone(),
                        at_ms: now_ms,
                    });
                    events.push(event(
                        kid,
                        format!("JWT-SVID signing key {kid} left the bundle"),
                    ));
                }
            }
        }
        Ok((changes, events))
    }

    fn open(&self, records: &[JwtKeyRecord]) -> Result<KeySet, Error> {
        let mut signer = None;
        let mut published = Vec::new();
        for r in records.iter().filter(|r| r.state != "removed") {
            published.push(Jwk::p256(r.kid.clone(), &r.public_point));
            if r.state == State::Active.as_str() {
                let pkcs8 = self.kek.open(&seal_context(&r.kid), &r.sealed_key)?;
                let key = SigningKey::from_pkcs8(&pkcs8).map_err(Error::Key)?;
                if key.kid() != r.kid {
                    return Err(Error::Key(format!(
                        "stored key {} opens to a key with ID {}",
                        r.kid,
                        key.kid()
                    )));
                }
                signer = Some(Arc::new(key));
            }
        }
        Ok(KeySet {
            signer,
            published,
            seen: seen(records),
        })
    }
}

/// What the sealed key is bound to, so that it cannot be passed off as another row's.
fn seal_context(kid: &str) -> Vec<u8> {
    format!("jwt-key:{kid}").into_bytes()
}

fn seen(records: &[JwtKeyRecord]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| (r.kid.clone(), r.state.clone()))
        .collect()
}

fn views(records: &[JwtKeyRecord]) -> Vec<KeyView> {
    records
        .iter()
        .filter_map(|r| {
            Some(KeyView {
                kid: r.kid.clone(),
                state: State::parse(&r.state)?,
                created_at_ms: r.created_at_ms,
                activated_at_ms: r.activated_at_ms,
                retired_at_ms: r.retired_at_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn settings() -> Settings {
        Settings {
            svid_ttl: Ttl::from_secs(300).unwrap(),
            key_ttl: Ttl::from_secs(24 * 3600).unwrap(),
            clock_skew: Duration::from_secs(30),
        }
    }

    fn key(kid: &str, state: State, activated: Option<i64>, retired: Option<i64>) -> KeyView {
        KeyView {
            kid: kid.into(),
            state,
            created_at_ms: 0,
            activated_at_ms: activated,
            retired_at_ms: retired,
        }
    }

    #[test]
    fn the_first_key_signs_at_once_and_a_successor_is_published_before_it_signs() {
        let s = settings();
        assert_eq!(due(&[], 0, &s), vec![Step::Create { active: true }]);
        let a = key("a", State::Active, Some(0), None);
        assert!(due(std::slice::from_ref(&a), 19 * HOUR, &s).is_empty());
        assert_eq!(
            due(std::slice::from_ref(&a), 20 * HOUR, &s),
            vec![Step::Create { active: false }]
        );
        let b = key("b", State::Prepared, None, None);
        assert!(due(&[a.clone(), b.clone()], 23 * HOUR, &s).is_empty());
        assert_eq!(
            due(&[a, b], 24 * HOUR, &s),
            vec![Step::Activate {
                kid: "b".into(),
                retire: Some("a".into())
            }]
        );
    }

    #[test]
    fn a_retired_key_stays_published_until_its_last_token_expired() {
        let s = settings();
        let keys = [
            key("a", State::Retired, Some(0), Some(HOUR)),
            key("b", State::Active, Some(HOUR), None),
        ];
        let last_token_gone = HOUR + 300_000 + 30_000;
        assert!(due(&keys, last_token_gone - 1, &s).is_empty());
        assert_eq!(
            due(&keys, last_token_gone, &s),
            vec![Step::Drop { kid: "a".into() }]
        );
        // A prepared key with none active (the active one was lost) signs at once.
        let orphan = [key("c", State::Prepared, None, None)];
        assert_eq!(
            due(&orphan, 0, &s),
            vec![Step::Activate {
                kid: "c".into(),
                retire: None
            }]
        );
    }
}
