//! The placement registry: which app instances exist and where they run. Stored, so a restart
//! keeps them, and published as events so the agent half can follow.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{broadcast, Mutex};

use crate::clock::Clock;
use crate::ids::{CellId, Guid};
use crate::placement::{Placement, PlacementUpdate};
use crate::store::Store;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The instance is registered already with other facts.
    #[error("instance {0} is already registered with a different placement; deregister it first")]
    Conflict(Guid),
    /// No such instance.
    #[error("no instance {0} is registered")]
    Unknown(Guid),
    /// The store failed; nothing changed.
    #[error("placement store: {0}")]
    Store(#[from] crate::store::Error),
}

/// A change to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An instance was registered.
    Registered(Placement),
    /// An instance was deregistered.
    Deregistered(Placement),
}

/// The registry. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    /// Held by a change from its check to its event, across the store write, so that changes
    /// happen one at a time.
    changing: Arc<Mutex<()>>,
    /// Locked only for moments and never across an await: every sign request of a cell reads
    /// it, and a lock that waits for its holder to be scheduled would queue them all.
    placements: Arc<RwLock<BTreeMap<Guid, Placement>>>,
    events: broadcast::Sender<Event>,
    clock: Clock,
}

impl Registry {
    /// Loads the stored placements.
    pub async fn load(store: Store, clock: Clock) -> Result<Registry, Error> {
        let placements = store
            .placements()
            .await?
            .into_iter()
            .map(|p| (p.instance_guid.clone(), p))
            .collect();
        let (events, _) = broadcast::channel(1024);
        Ok(Registry {
            store,
            changing: Arc::default(),
            placements: Arc::new(RwLock::new(placements)),
            events,
            clock,
        })
    }

    /// Registers `p`. Registering the same placement again is a no-op that returns false.
    pub async fn register(&self, p: Placement) -> Result<bool, Error> {
        let _changing = self.changing.lock().await;
        match self.get(&p.instance_guid) {
            Some(existing) if existing == p => return Ok(false),
            Some(_) => return Err(Error::Conflict(p.instance_guid)),
            None => {}
        }
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        self.store.insert_placement(&p, now_ms).await?;
        let mut all = self.write();
        all.insert(p.instance_guid.clone(), p.clone());
        // Nobody listening is fine: a subscriber starts from `snapshot`.
        let _ = self.events.send(Event::Registered(p));
        Ok(true)
    }

    /// Deregisters an instance and returns what it was.
    pub async fn deregister(&self, instance: &Guid) -> Result<Placement, Error> {
        let _changing = self.changing.lock().await;
        if self.get(instance).is_none() {
            return Err(Error::Unknown(instance.clone()));
        }
        self.store.delete_placement(instance.as_str()).await?;
        let mut all = self.write();
        let p = all.remove(instance).expect("checked above");
        let _ = self.events.send(Event::Deregistered(p.clone()));
        Ok(p)
    }

    /// Where `instance` is placed, if it is registered.
    pub fn get(&self, instance: &Guid) -> Option<Placement> {
        self.read().get(instance).cloned()
    }

    /// The apps with at least one instance placed.
    pub fn apps(&self) -> std::collections::BTreeSet<Guid> {
        self.read().values().map(|p| p.app_guid.clone()).collect()
    }

    /// Every placement now, and a receiver of every change after it: taken under one lock so no
    /// change falls between the two.
    pub fn snapshot(&self) -> (Vec<Placement>, broadcast::Receiver<Event>) {
        // Changes insert and send their event under the write lock.
        let all = self.read();
        (all.values().cloned().collect(), self.events.subscribe())
    }

    /// Follows the placements on `cell` (every cell with `None`): a snapshot first, then each
    /// change.
    pub fn watch(&self, cell: Option<CellId>) -> PlacementWatch {
        PlacementWatch {
            registry: self.clone(),
            cell,
            events: None,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Guid, Placement>> {
        self.placements.read().expect("never poisoned")
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<Guid, Placement>> {
        self.placements.write().expect("never poisoned")
    }
}

/// The placements of one cell (or all) as a sequence of [`PlacementUpdate`]s; see
/// [`Registry::watch`].
pub struct PlacementWatch {
    registry: Registry,
    cell: Option<CellId>,
    /// The changes after the last snapshot; `None` when a snapshot is due.
    events: Option<broadcast::Receiver<Event>>,
}

impl PlacementWatch {
    /// The next update: a snapshot first, and again whenever this follower fell so far behind
    /// that changes were dropped for it, so it never misses one.
    pub async fn next(&mut self) -> PlacementUpdate {
        loop {
            let Some(events) = &mut self.events else {
                let (all, events) = self.registry.snapshot();
                self.events = Some(events);
                let mine = all.into_iter().filter(|p| self.wants(p)).collect();
                return PlacementUpdate::Snapshot(mine);
            };
            match events.recv().await {
                Ok(Event::Registered(p)) if self.wants(&p) => {
                    return PlacementUpdate::Registered(p)
                }
                Ok(Event::Deregistered(p)) if self.wants(&p) => {
                    return PlacementUpdate::Deregistered(p)
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "a placement follower fell behind; sending a snapshot"
                    );
                    self.events = None;
                }
                // The watch holds the registry, and with it the sender.
                Err(broadcast::error::RecvError::Closed) => unreachable!("the sender is held"),
            }
        }
    }

    fn wants(&self, p: &Placement) -> bool {
        self.cell.as_ref().is_none_or(|c| *c == p.cell_id)
    }
}
