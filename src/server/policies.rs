//! The container-to-container policies in force and the enforcement modes, as the server keeps
//! them: changed by operators or polled from CF's policy server, each change stored and
//! recorded in the ledger before it is in force, and announced per destination app so that only
//! the cells serving that app hear of it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;

use super::registry::PlacementWatch;
use crate::clock::{unix_ms, Clock};
use crate::ids::Guid;
use crate::ledger::Ledger;
use crate::placement::{Placement, PlacementUpdate};
use crate::policy::{AllowList, AllowSets, Mode, Modes, Origin, Policy, Scope, Source};
use crate::spiffe::{IdTemplate, IdValues, TrustDomain};
use crate::store::{EntryKind, LedgerRecord, Store};

/// Why a change was not made. Nothing of it is in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error("policy store: {0}")]
    Store(#[from] crate::store::Error),
    /// The ledger could not record the change, so it was undone.
    #[error("the change could not be recorded, so it was not made: {0}")]
    Ledger(#[from] crate::ledger::Error),
    /// A source SPIFFE ID in this trust domain: its apps are named by GUID, so that the ID
    /// follows their org and space.
    #[error("source {0} is in this trust domain; name this foundation's apps by app GUID")]
    OwnTrustDomain(String),
    /// Policies here come from elsewhere (`policy.source`).
    #[error("policies here come from {} (policy.source = \"{}\"); change them there", in_force.describe(), in_force.as_str())]
    NotHere {
        /// Where they come from.
        in_force: Origin,
    },
}

/// Which destination apps' allow lists may have changed.
#[derive(Clone, Debug)]
pub enum Changed {
    /// These.
    Apps(Arc<[Guid]>),
    /// Any (a space's or the foundation's mode).
    All,
}

/// The space and org an app was placed in: what its SPIFFE ID and its space's mode need.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppScope {
    space: Option<Guid>,
    org: Option<Guid>,
}

struct State {
    policies: BTreeSet<Policy>,
    allow: AllowSets,
    modes: Modes,
    /// Every app placed since the server started (the stored placements included), kept after
    /// its instances leave: its certificates outlive its placements.
    apps: HashMap<Guid, AppScope>,
}

impl State {
    /// Puts `p` in force (`adding`) or out of it, and notes its destination in `touched` when
    /// that app's allow list changed.
    fn change(&mut self, adding: bool, p: &Policy, touched: &mut BTreeSet<Guid>) {
        let changed = if adding {
            self.policies.insert(p.clone());
            self.allow.add(p)
        } else {
            self.policies.remove(p);
            self.allow.remove(p)
        };
        if changed {
            touched.insert(p.destination.clone());
        }
    }
}

/// The policies and modes. Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct Policies {
    store: Store,
    ledger: Ledger,
    clock: Clock,
    origin: Origin,
    trust_domain: TrustDomain,
    template: IdTemplate,
    /// Held by a change from its store write to its announcement, so changes happen one at a
    /// time and in the ledger's order.
    changing: Arc<Mutex<()>>,
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<Changed>,
}

/// What the server needs to name apps and to start from.
pub struct Settings {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// How app SPIFFE IDs are written.
    pub template: IdTemplate,
    /// The foundation's mode until one is set.
    pub default_mode: Mode,
    /// Where the policies in force come from.
    pub origin: Origin,
}

impl Policies {
    /// Loads the stored policies and modes.
    pub async fn load(
        store: Store,
        ledger: Ledger,
        clock: Clock,
        settings: Settings,
    ) -> Result<Policies, Error> {
        let policies: BTreeSet<Policy> =
            store.policies(settings.origin).await?.into_iter().collect();
        let mut modes = Modes::new(settings.default_mode);
        for (scope, mode) in store.enforcement_modes().await? {
            modes.set(scope, Some(mode));
        }
        let (changes, _) = broadcast::channel(4096);
        Ok(Policies {
            store,
            ledger,
            clock,
            origin: settings.origin,
            trust_domain: settings.trust_domain,
            template: settings.template,
            changing: Arc::default(),
            state: Arc::new(RwLock::new(State {
                allow: AllowSets::of(&policies),
                policies,
                modes,
                apps: HashMap::new(),
            })),
            changes,
        })
    }

    /// Adds `policies` to idmint's store on behalf of `by`; those in force already are left as
    /// they are. Returns those that were new.
    pub async fn add(&self, policies: &BTreeSet<Policy>, by: &str) -> Result<Vec<Policy>, Error> {
        self.only_from(Origin::Store)?;
        for p in policies {
            if let Source::Foreign(id) = &p.source {
                if id.trust_domain() == self.trust_domain {
                    return Err(Error::OwnTrustDomain(id.as_str().to_string()));
                }
            }
        }
        let _changing = self.changing.lock().await;
        let new: Vec<Policy> = {
            let state = self.read();
            policies
                .iter()
                .filter(|p| !state.policies.contains(p))
                .cloned()
                .collect()
        };
        self.apply(new, Vec::new(), &format!("by {by}")).await
    }

    /// Removes `policies` from idmint's store on behalf of `by`; those not in force are
    /// ignored. Returns those that were in force.
    pub async fn remove(
        &self,
        policies: &BTreeSet<Policy>,
        by: &str,
    ) -> Result<Vec<Policy>, Error> {
        self.only_from(Origin::Store)?;
        let _changing = self.changing.lock().await;
        let gone: Vec<Policy> = {
            let state = self.read();
            policies
                .iter()
                .filter(|p| state.policies.contains(p))
                .cloned()
                .collect()
        };
        self.apply(Vec::new(), gone, &format!("by {by}")).await
    }

    /// Makes `policies`, a whole answer of CF's policy server, the set in force. Returns how
    /// many were added and removed.
    pub async fn replace(&self, policies: BTreeSet<Policy>) -> Result<(usize, usize), Error> {
        self.only_from(Origin::PolicyServer)?;
        let _changing = self.changing.lock().await;
        let (added, removed) = difference(&self.read().policies, &policies);
        let changed = self.apply(added, removed, "polled").await?;
        let added = changed.iter().filter(|p| policies.contains(p)).count();
        Ok((added, changed.len() - added))
    }

    fn only_from(&self, origin: Origin) -> Result<(), Error> {
        if self.origin == origin {
            return Ok(());
        }
        Err(Error::NotHere {
            in_force: self.origin,
        })
    }

    /// Stores, records and puts in force `added` and `removed` (which the caller, holding
    /// `changing`, knows to be new and in force). A change whose ledger record fails is undone
    /// in the store and not put in force, so the ledger, the store and what is in force agree.
    /// Returns the changes made.
    async fn apply(
        &self,
        added: Vec<Policy>,
        removed: Vec<Policy>,
        how: &str,
    ) -> Result<Vec<Policy>, Error> {
        if added.is_empty() && removed.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let now_ms = unix_ms(now);
        self.store
            .change_policies(self.origin, &added, &removed, now_ms)
            .await?;
        let from = self.origin.describe();
        // The store's policies are added and removed; the policy server's come into force and
        // go out of it (as the apps they name are placed and leave, too).
        let (on, off) = match self.origin {
            Origin::Store => ("added", "removed"),
            Origin::PolicyServer => ("in force", "out of force"),
        };
        let record = |p: &Policy, verb: &str| LedgerRecord {
            app_guid: Some(p.destination.to_string()),
            reason: Some(format!(
                "policy {verb}: {} {} may reach app {} ({} ports {}); from {from}, {how}",
                match p.source {
                    Source::App(_) => "app",
                    Source::Foreign(_) => "workload",
                },
                p.source,
                p.destination,
                p.protocol,
                p.ports
            )),
            ..LedgerRecord::bare(EntryKind::Policy, now)
        };
        let appends = added
            .iter()
            .map(|p| (true, p, record(p, on)))
            .chain(removed.iter().map(|p| (false, p, record(p, off))))
            .map(|(adding, p, r)| async move { (adding, p, self.ledger.append(r).await) });
        let outcomes = futures_util::future::join_all(appends).await;
        let mut failed = None;
        let (mut undo_add, mut undo_remove, mut done) = (Vec::new(), Vec::new(), Vec::new());
        for (adding, p, outcome) in outcomes {
            match outcome {
                Ok(_) => done.push((adding, p.clone())),
                Err(e) => {
                    failed.get_or_insert(e);
                    // Undone as recorded: an unrecorded addition is removed again.
                    if adding {
                        undo_remove.push(p.clone());
                    } else {
                        undo_add.push(p.clone());
                    }
                }
            }
        }
        if failed.is_some() {
            if let Err(e) = self
                .store
                .change_policies(self.origin, &undo_add, &undo_remove, now_ms)
                .await
            {
                tracing::error!(error = %e, "cannot undo unrecorded policy changes in the store; they take effect at the next start");
            }
        }
        let touched: Vec<Guid> = {
            let mut state = self.write();
            let mut touched = BTreeSet::new();
            for (adding, p) in &done {
                state.change(*adding, p, &mut touched);
            }
            touched.into_iter().collect()
        };
        if !touched.is_empty() {
            let _ = self.changes.send(Changed::Apps(touched.into()));
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(done.into_iter().map(|(_, p)| p).collect()),
        }
    }

    /// Sets the mode of `scope` (`None`: clears it, so the wider one applies) on behalf of `by`.
    /// Returns whether anything changed.
    pub async fn set_mode(
        &self,
        scope: Scope,
        mode: Option<Mode>,
        by: &str,
    ) -> Result<bool, Error> {
        let _changing = self.changing.lock().await;
        let mut after = self.read().modes.clone();
        if !after.set(scope.clone(), mode) {
            return Ok(false);
        }
        let now = self.clock.now();
        let now_ms = unix_ms(now);
        self.store
            .set_enforcement_mode(&scope, mode, now_ms)
            .await?;
        let what = match mode {
            Some(m) => format!("set to {m}"),
            None => format!(
                "cleared (the wider setting applies; the foundation's default is {})",
                after.configured()
            ),
        };
        let record = LedgerRecord {
            app_guid: match &scope {
                Scope::App(g) => Some(g.to_string()),
                _ => None,
            },
            space_guid: match &scope {
                Scope::Space(g) => Some(g.to_string()),
                _ => None,
            },
            reason: Some(format!("enforcement mode of {scope} {what}, by {by}")),
            ..LedgerRecord::bare(EntryKind::Policy, now)
        };
        if let Err(e) = self.ledger.append(record).await {
            let before = self
                .read()
                .modes
                .iter()
                .find(|(s, _)| **s == scope)
                .map(|(_, m)| m);
            if let Err(u) = self
                .store
                .set_enforcement_mode(&scope, before, now_ms)
                .await
            {
                tracing::error!(%scope, error = %u, "cannot undo an unrecorded mode change in the store; it takes effect at the next start");
            }
            return Err(e.into());
        }
        self.write().modes = after;
        let changed = match scope {
            Scope::App(g) => Changed::Apps(vec![g].into()),
            Scope::Space(_) | Scope::Foundation => Changed::All,
        };
        let _ = self.changes.send(changed);
        Ok(true)
    }

    /// Takes up the policies and modes as stored by another server sharing the database (it
    /// recorded them): what is in force here becomes what the store says, announced as a
    /// change made here would be.
    pub async fn take_up(&self) -> Result<(), Error> {
        let _changing = self.changing.lock().await;
        let stored: BTreeSet<Policy> = self
            .store
            .policies(self.origin)
            .await?
            .into_iter()
            .collect();
        let mut modes = Modes::new(self.read().modes.configured());
        for (scope, mode) in self.store.enforcement_modes().await? {
            modes.set(scope, Some(mode));
        }
        let changed = {
            let mut state = self.write();
            let (added, removed) = difference(&state.policies, &stored);
            let mut touched = BTreeSet::new();
            for p in &added {
                state.change(true, p, &mut touched);
            }
            for p in &removed {
                state.change(false, p, &mut touched);
            }
            if state.modes != modes {
                state.modes = modes;
                Some(Changed::All)
            } else {
                (!touched.is_empty()).then(|| Changed::Apps(touched.into_iter().collect()))
            }
        };
        if let Some(c) = changed {
            let _ = self.changes.send(c);
        }
        Ok(())
    }

    /// What the sidecars of `app` accept now.
    pub fn allow_list(&self, app: &Guid, space: Option<&Guid>) -> AllowList {
        let state = self.read();
        let space = space.or_else(|| state.apps.get(app).and_then(|a| a.space.as_ref()));
        let mode = state.modes.of(app, space);
        let sources = state
            .allow
            .sources(app)
            .filter_map(|source| match source {
                Source::App(app) => self.spiffe_id(app, state.apps.get(app)),
                Source::Foreign(id) => Some(id.as_str().to_string()),
            })
            .collect();
        AllowList { mode, sources }
    }

    /// The SPIFFE ID of `app`, if it can be written: with the template's default of org and
    /// space in it, only once the app has been placed somewhere (it has no certificate before).
    fn spiffe_id(&self, app: &Guid, scope: Option<&AppScope>) -> Option<String> {
        let values = IdValues {
            org_guid: scope.and_then(|s| s.org.as_ref()).map(Guid::as_str),
            space_guid: scope.and_then(|s| s.space.as_ref()).map(Guid::as_str),
            app_guid: app.as_str(),
        };
        let id = self.template.render(&self.trust_domain, values).ok()?;
        Some(id.to_string())
    }

    /// Every policy in force, in order; only those naming `app` (either side) when given.
    pub fn list(&self, app: Option<&Guid>) -> Vec<Policy> {
        let state = self.read();
        state
            .policies
            .iter()
            .filter(|p| app.is_none_or(|a| p.source.app() == Some(a) || p.destination == *a))
            .cloned()
            .collect()
    }

    /// How many policies are in force.
    pub fn count(&self) -> usize {
        self.read().policies.len()
    }

    /// The modes set, and the foundation's default.
    pub fn modes(&self) -> Modes {
        self.read().modes.clone()
    }

    /// Follows every cell's placements for what the allow lists need of them: a source app's
    /// org and space (its SPIFFE ID) and a destination app's space (its mode). Runs until
    /// `stop`.
    pub async fn follow_placements(self, mut placements: PlacementWatch, stop: CancellationToken) {
        loop {
            let update = tokio::select! {
                _ = stop.cancelled() => return,
                u = placements.next() => u,
            };
            self.learn(update);
        }
    }

    /// Takes in one placement update; see [`Policies::follow_placements`].
    pub fn learn(&self, update: PlacementUpdate) {
        let changed = match update {
            PlacementUpdate::Snapshot(all) => {
                let mut state = self.write();
                for p in &all {
                    state.apps.insert(p.app_guid.clone(), scope_of(p));
                }
                Some(Changed::All)
            }
            PlacementUpdate::Registered(p) => {
                let mut state = self.write();
                let scope = scope_of(&p);
                if state.apps.get(&p.app_guid) == Some(&scope) {
                    None
                } else {
                    state.apps.insert(p.app_guid.clone(), scope);
                    // The apps it may reach now know its ID; its own mode may follow its space.
                    let mut apps: Vec<Guid> =
                        state.allow.destinations_of(&p.app_guid).cloned().collect();
                    apps.push(p.app_guid.clone());
                    Some(Changed::Apps(apps.into()))
                }
            }
            PlacementUpdate::Deregistered(_) => None,
        };
        if let Some(c) = changed {
            let _ = self.changes.send(c);
        }
    }

    /// A receiver of every change announced from now on.
    pub fn changes(&self) -> broadcast::Receiver<Changed> {
        self.changes.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("never poisoned")
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("never poisoned")
    }
}

/// What `new` adds to `old`, and what it no longer has: one walk over both sorted sets.
fn difference(old: &BTreeSet<Policy>, new: &BTreeSet<Policy>) -> (Vec<Policy>, Vec<Policy>) {
    use std::cmp::Ordering;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => return (added, removed),
            (Some(_), None) => removed.extend(o.by_ref().cloned()),
            (None, Some(_)) => added.extend(n.by_ref().cloned()),
            (Some(a), Some(b)) => match a.cmp(b) {
                Ordering::Less => removed.extend(o.next().cloned()),
                Ordering::Greater => added.extend(n.next().cloned()),
                Ordering::Equal => {
                    o.next();
                    n.next();
                }
            },
        }
    }
}

fn scope_of(p: &Placement) -> AppScope {
    AppScope {
        space: p.space_guid.clone(),
        org: p.org_guid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PortRange, Protocol};

    fn p(source: u8, port: i64) -> Policy {
        let g = |n: u8| -> Guid {
            format!("{n:08x}-0000-4000-8000-000000000000")
                .parse()
                .unwrap()
        };
        Policy {
            source: g(source).into(),
            destination: g(0),
            protocol: Protocol::Tcp,
            ports: PortRange::new(port, port).unwrap(),
        }
    }

    #[test]
    fn the_difference_names_what_came_and_what_went() {
        let old: BTreeSet<Policy> = [p(1, 80), p(2, 80), p(3, 80), p(3, 81)].into();
        let new: BTreeSet<Policy> = [p(0, 80), p(2, 80), p(3, 81), p(4, 80)].into();
        let (added, removed) = difference(&old, &new);
        assert_eq!(added, vec![p(0, 80), p(4, 80)]);
        assert_eq!(removed, vec![p(1, 80), p(3, 80)]);
        assert_eq!(difference(&new, &new), (vec![], vec![]));
        assert_eq!(difference(&BTreeSet::new(), &new).0.len(), 4);
        assert_eq!(difference(&old, &BTreeSet::new()).1.len(), 4);
    }
}
