//! When the self-signed CA rotates: pure functions of the stored CA certificates, the time and
//! whether the sidecars have the current trust bundle, so the schedule is tested without
//! waiting for it.
//!
//! An intermediate is prepared at 60% of its life and takes over at two thirds; the one it
//! replaces is retired (leaves carry their chain, so nothing else changes for relying parties).
//! A root is prepared at a configurable share of its life, together with an intermediate under
//! it: it enters the trust bundle at once but signs nothing until every connected sidecar has
//! acknowledged a bundle containing it, or a maximum wait has passed. The root it replaces stays
//! in the bundle until the last leaf chained to it has expired, then is pruned.

use std::time::Duration;

use time::OffsetDateTime;

use super::Role;

/// Share of an intermediate's life at which its successor is prepared.
pub const INTERMEDIATE_PREPARE_AT: f64 = 0.6;
/// Share of an intermediate's life at which its successor takes over.
pub const INTERMEDIATE_ACTIVATE_AT: f64 = 2.0 / 3.0;

/// A CA certificate's place in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Made, not signing yet (a prepared root is already in the trust bundle).
    Prepared,
    /// Signing (intermediate) or signing through its intermediate (root).
    Active,
    /// Replaced. A retired root stays in the bundle until it is pruned.
    Retired,
}

impl State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Prepared => "prepared",
            State::Active => "active",
            State::Retired => "retired",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "prepared" => Some(State::Prepared),
            "active" => Some(State::Active),
            "retired" => Some(State::Retired),
            _ => None,
        }
    }
}

/// What the schedule needs to know about one CA certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaView {
    /// Root or intermediate.
    pub role: Role,
    /// Where it is in its life cycle.
    pub state: State,
    /// SHA-256 fingerprint, hex.
    pub fingerprint: String,
    /// The root that signed it (intermediates).
    pub parent: Option<String>,
    /// Validity.
    pub not_before: OffsetDateTime,
    /// Validity.
    pub not_after: OffsetDateTime,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it was retired.
    pub retired_at: Option<OffsetDateTime>,
    /// Roots: when it left the trust bundle.
    pub pruned_at: Option<OffsetDateTime>,
}

impl CaView {
    /// The moment `share` of its life has passed, counted from when it was made (its
    /// not-before is back-dated for clock skew).
    pub fn at_share(&self, share: f64) -> OffsetDateTime {
        let start = self.created_at.max(self.not_before);
        start + (self.not_after - start) * share
    }
}

/// The settings the schedule follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// The longest a leaf lives: a retired root is kept this long (and the clock-skew
    /// allowance) after its last leaf could have been issued.
    pub leaf_ttl: Duration,
    /// How far peers' clocks may lag ours.
    pub clock_skew: Duration,
    /// Share of a root's life at which its successor is prepared.
    pub root_rotate_at: f64,
    /// How long a prepared root waits for every sidecar's acknowledgement before it signs anyway.
    pub root_activation_max_wait: Duration,
    /// How long a prepared root is published, at least, before it signs (federated trust
    /// domains fetch it at their pace, not ours); never longer than the maximum wait.
    pub root_min_publish: Duration,
}

/// What the sidecars have acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetAck {
    /// Every connected sidecar has acknowledged a bundle containing the prepared root (or none
    /// is connected).
    HasPreparedRoot,
    /// Some sidecar has not yet.
    Waiting,
}

/// The next rotation step that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Drop a retired root from the trust bundle: every leaf chained to it has expired.
    PruneRoot {
        /// The root.
        root: String,
    },
    /// The prepared root and its intermediate start signing; the old ones retire.
    ActivateRoot {
        /// The prepared root.
        root: String,
        /// Its prepared intermediate.
        intermediate: String,
        /// True when the maximum wait passed before every sidecar acknowledged.
        without_every_ack: bool,
    },
    /// Make a new root and an intermediate under it, both prepared; the root joins the bundle.
    PrepareRoot,
    /// Make a new intermediate under the active root, prepared.
    PrepareIntermediate,
    /// The prepared intermediate starts signing; the old one retires.
    ActivateIntermediate {
        /// The prepared intermediate.
        intermediate: String,
    },
}

/// When a retired root may leave the bundle: its last leaf was issued no later than its
/// retirement and lives at most `leaf_ttl`; peers' clocks may lag by `clock_skew`.
pub fn prune_time(
    retired_at: OffsetDateTime,
    leaf_ttl: Duration,
    clock_skew: Duration,
) -> OffsetDateTime {
    retired_at + leaf_ttl + clock_skew
}

/// When a prepared root stops waiting for acknowledgements.
pub fn activation_deadline(prepared_at: OffsetDateTime, max_wait: Duration) -> OffsetDateTime {
    prepared_at + max_wait
}

/// The step due at `now`, if any. Apply it and ask again: several may be due at once.
pub fn next_step(
    certs: &[CaView],
    now: OffsetDateTime,
    policy: &Policy,
    acks: FleetAck,
) -> Option<Step> {
    let of = |role: Role, state: State| {
        certs
            .iter()
            .filter(move |c| c.role == role && c.state == state)
    };
    for root in of(Role::Root, State::Retired) {
        if let (Some(retired), None) = (root.retired_at, root.pruned_at) {
            if now >= prune_time(retired, policy.leaf_ttl, policy.clock_skew) {
                return Some(Step::PruneRoot {
                    root: root.fingerprint.clone(),
                });
            }
        }
    }
    if let Some(root) = of(Role::Root, State::Prepared).next_back() {
        let published_long_enough = now >= root.created_at + policy.root_min_publish;
        let acked = acks == FleetAck::HasPreparedRoot && published_long_enough;
        let timed_out =
            now >= activation_deadline(root.created_at, policy.root_activation_max_wait);
        let intermediate = of(Role::Intermediate, State::Prepared)
            .find(|i| i.parent.as_deref() == Some(root.fingerprint.as_str()));
        return match intermediate {
            Some(i) if acked || timed_out => Some(Step::ActivateRoot {
                root: root.fingerprint.clone(),
                intermediate: i.fingerprint.clone(),
                without_every_ack: !acked,
            }),
            // A prepared root without its intermediate cannot sign; make a new pair.
            None => Some(Step::PrepareRoot),
            Some(_) => None,
        };
    }
    let root = of(Role::Root, State::Active).next_back()?;
    if now >= root.at_share(policy.root_rotate_at) {
        return Some(Step::PrepareRoot);
    }
    let active = of(Role::Intermediate, State::Active).next_back()?;
    let prepared = of(Role::Intermediate, State::Prepared)
        .find(|i| i.parent.as_deref() == Some(root.fingerprint.as_str()));
    match prepared {
        Some(p) if now >= active.at_share(INTERMEDIATE_ACTIVATE_AT) => {
            Some(Step::ActivateIntermediate {
                intermediate: p.fingerprint.clone(),
            })
        }
        // A successor would end with the root no later than this one does: nothing to gain;
        // the root's own rotation comes first.
        None if now >= active.at_share(INTERMEDIATE_PREPARE_AT)
            && root.not_after > active.not_after =>
        {
            Some(Step::PrepareIntermediate)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

    fn days(n: i64) -> time::Duration {
        time::Duration::days(n)
    }

    fn cert(
        role: Role,
        state: State,
        fp: &str,
        parent: Option<&str>,
        from: i64,
        to: i64,
    ) -> CaView {
        CaView {
            role,
            state,
            fingerprint: fp.into(),
            parent: parent.map(Into::into),
            not_before: T0 + days(from),
            not_after: T0 + days(to),
            created_at: T0 + days(from),
            retired_at: None,
            pruned_at: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            leaf_ttl: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(30),
            root_rotate_at: 0.75,
            root_activation_max_wait: Duration::from_secs(3600),
            root_min_publish: Duration::ZERO,
        }
    }

    /// A root for 1000 days and an intermediate for 300.
    fn fresh() -> Vec<CaView> {
        vec![
            cert(Role::Root, State::Active, "r1", None, 0, 1000),
            cert(Role::Intermediate, State::Active, "i1", Some("r1"), 0, 300),
        ]
    }

    #[test]
    fn intermediate_is_prepared_at_sixty_percent_and_takes_over_at_two_thirds() {
        let p = policy();
        let mut certs = fresh();
        assert_eq!(
            next_step(&certs, T0 + days(179), &p, FleetAck::Waiting),
            None
        );
        assert_eq!(
            next_step(&certs, T0 + days(180), &p, FleetAck::Waiting),
            Some(Step::PrepareIntermediate)
        );
        certs.push(cert(
            Role::Intermediate,
            State::Prepared,
            "i2",
            Some("r1"),
            180,
            480,
        ));
        assert_eq!(
            next_step(&certs, T0 + days(199), &p, FleetAck::Waiting),
            None
        );
        assert_eq!(
            next_step(&certs, T0 + days(200), &p, FleetAck::Waiting),
            Some(Step::ActivateIntermediate {
                intermediate: "i2".into()
            })
        );
    }

    #[test]
    fn an_intermediate_that_the_root_would_cut_short_is_not_replaced() {
        let p = Policy {
            root_rotate_at: 0.99,
            ..policy()
        };
        // The intermediate already ends with the root.
        let certs = vec![
            cert(Role::Root, State::Active, "r1", None, 0, 1000),
            cert(
                Role::Intermediate,
                State::Active,
                "i1",
                Some("r1"),
                700,
                1000,
            ),
        ];
        assert_eq!(
            next_step(&certs, T0 + days(950), &p, FleetAck::Waiting),
            None
        );
    }

    #[test]
    fn root_is_prepared_at_its_share_and_signs_only_once_acknowledged() {
        let p = policy();
        let mut certs = fresh();
        assert_eq!(
            next_step(&certs, T0 + days(750), &p, FleetAck::Waiting),
            Some(Step::PrepareRoot)
        );
        let mut r2 = cert(Role::Root, State::Prepared, "r2", None, 750, 1750);
        r2.created_at = T0 + days(750);
        certs.push(r2);
        certs.push(cert(
            Role::Intermediate,
            State::Prepared,
            "i9",
            Some("r2"),
            750,
            1050,
        ));
        let now = T0 + days(750) + time::Duration::minutes(10);
        // Waiting for the sidecars: nothing to do, not even the old intermediate's rotation.
        assert_eq!(next_step(&certs, now, &p, FleetAck::Waiting), None);
        assert_eq!(
            next_step(&certs, now, &p, FleetAck::HasPreparedRoot),
            Some(Step::ActivateRoot {
                root: "r2".into(),
                intermediate: "i9".into(),
                without_every_ack: false
            })
        );
        // Served to federated trust domains: acknowledged or not, it waits out its least
        // publication time first.
        let federated = Policy {
            root_min_publish: Duration::from_secs(15 * 60),
            ..p
        };
        assert_eq!(
            next_step(&certs, now, &federated, FleetAck::HasPreparedRoot),
            None
        );
        let published = T0 + days(750) + time::Duration::minutes(15);
        assert!(matches!(
            next_step(&certs, published, &federated, FleetAck::HasPreparedRoot),
            Some(Step::ActivateRoot {
                without_every_ack: false,
                ..
            })
        ));
        // After the maximum wait it signs anyway, and says so.
        let late = T0 + days(750) + time::Duration::hours(1);
        assert_eq!(
            next_step(&certs, late, &p, FleetAck::Waiting),
            Some(Step::ActivateRoot {
                root: "r2".into(),
                intermediate: "i9".into(),
                without_every_ack: true
            })
        );
    }

    #[test]
    fn a_retired_root_is_pruned_once_its_last_leaf_has_expired() {
        let p = policy();
        let retired_at = T0 + days(751);
        let mut r1 = cert(Role::Root, State::Retired, "r1", None, 0, 1000);
        r1.retired_at = Some(retired_at);
        let mut certs = vec![
            r1,
            cert(Role::Root, State::Active, "r2", None, 750, 1750),
            cert(
                Role::Intermediate,
                State::Active,
                "i9",
                Some("r2"),
                750,
                1050,
            ),
        ];
        let due = retired_at + time::Duration::hours(1) + time::Duration::seconds(30);
        assert_eq!(
            next_step(
                &certs,
                due - time::Duration::seconds(1),
                &p,
                FleetAck::Waiting
            ),
            None
        );
        assert_eq!(
            next_step(&certs, due, &p, FleetAck::Waiting),
            Some(Step::PruneRoot { root: "r1".into() })
        );
        certs[0].pruned_at = Some(due);
        assert_eq!(next_step(&certs, due, &p, FleetAck::Waiting), None);
    }

    #[test]
    fn a_prepared_root_without_its_intermediate_is_prepared_again() {
        let p = policy();
        let mut certs = fresh();
        certs.push(cert(Role::Root, State::Prepared, "r2", None, 750, 1750));
        assert_eq!(
            next_step(&certs, T0 + days(751), &p, FleetAck::HasPreparedRoot),
            Some(Step::PrepareRoot)
        );
    }

    #[test]
    fn a_ca_shorter_than_a_leaf_still_rotates_on_schedule() {
        // Intermediate of 30 minutes with one-hour leaves: leaves are capped at its expiry,
        // and it is still replaced at 60% / two thirds of its own life.
        let p = policy();
        let mut certs = vec![
            cert(Role::Root, State::Active, "r1", None, 0, 1000),
            cert(Role::Intermediate, State::Active, "i1", Some("r1"), 0, 0),
        ];
        certs[1].not_after = T0 + time::Duration::minutes(30);
        assert_eq!(
            next_step(
                &certs,
                T0 + time::Duration::minutes(18),
                &p,
                FleetAck::Waiting
            ),
            Some(Step::PrepareIntermediate)
        );
    }
}
