//! The placement registry: which app instances exist and where they run. Stored, so a restart
//! keeps them, and published as events so the agent half can follow.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{broadcast, Mutex};

use crate::clock::{unix_ms, Clock};
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
    /// The ledger could not record the change, so it was undone.
    #[error("the ledger cannot record the change, so nothing changed: {0}")]
    Unrecorded(String),
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
        if !self.store.insert_placement(&p, self.now_ms()).await? {
            // Registered through another server a moment ago: take that up and judge by it.
            let stored = self.store.placement(p.instance_guid.as_str()).await?;
            self.apply(&p.instance_guid, stored.clone());
            return match stored {
                Some(existing) if existing == p => Ok(false),
                _ => Err(Error::Conflict(p.instance_guid)),
            };
        }
        self.apply(&p.instance_guid, Some(p.clone()));
        Ok(true)
    }

    /// Deregisters an instance and returns what it was.
    pub async fn deregister(&self, instance: &Guid) -> Result<Placement, Error> {
        let _changing = self.changing.lock().await;
        // Registered through another server, perhaps, and not heard of yet.
        let known = match self.get(instance) {
            Some(p) => Some(p),
            None if self.store.is_shared() => self.store.placement(instance.as_str()).await?,
            None => None,
        };
        let Some(p) = known else {
            return Err(Error::Unknown(instance.clone()));
        };
        if !self
            .store
            .delete_placement(instance.as_str(), self.now_ms())
            .await?
        {
            self.apply(instance, None);
            return Err(Error::Unknown(instance.clone()));
        }
        self.apply(instance, None);
        Ok(p)
    }

    /// Takes up what the store now says of `instances`, changed by another server.
    pub async fn take_up(&self, instances: &[Guid]) -> Result<(), Error> {
        let _changing = self.changing.lock().await;
        for instance in instances {
            let stored = self.store.placement(instance.as_str()).await?;
            self.apply(instance, stored);
        }
        Ok(())
    }

    /// Takes up every stored placement, for a server that fell further behind than the change
    /// feed reaches.
    pub async fn reload(&self) -> Result<(), Error> {
        let _changing = self.changing.lock().await;
        let stored: BTreeMap<Guid, Placement> = self
            .store
            .placements()
            .await?
            .into_iter()
            .map(|p| (p.instance_guid.clone(), p))
            .collect();
        let gone: Vec<Guid> = self
            .read()
            .keys()
            .filter(|g| !stored.contains_key(*g))
            .cloned()
            .collect();
        for instance in gone {
            self.apply(&instance, None);
        }
        for (instance, p) in stored {
            self.apply(&instance, Some(p));
        }
        Ok(())
    }

    /// Where `instance` is placed: what this server knows, or, on a database that servers
    /// share, what the store says of an instance this one has not heard of yet.
    pub async fn find(&self, instance: &Guid) -> Result<Option<Placement>, Error> {
        if let Some(p) = self.get(instance) {
            return Ok(Some(p));
        }
        if !self.store.is_shared() {
            return Ok(None);
        }
        let _changing = self.changing.lock().await;
        let stored = self.store.placement(instance.as_str()).await?;
        self.apply(instance, stored.clone());
        Ok(stored)
    }

    /// Makes `instance` placed as `now` says (unplaced with `None`), announcing what changed.
    /// The caller holds `changing`.
    fn apply(&self, instance: &Guid, now: Option<Placement>) {
        let mut all = self.write();
        let before = all.get(instance);
        if before == now.as_ref() {
            return;
        }
        // Nobody listening is fine: a subscriber starts from `snapshot`.
        if let Some(old) = all.remove(instance) {
            let _ = self.events.send(Event::Deregistered(old));
        }
        if let Some(p) = now {
            all.insert(instance.clone(), p.clone());
            let _ = self.events.send(Event::Registered(p));
        }
    }

    fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    /// Where `instance` is placed, if it is registered.
    pub fn get(&self, instance: &Guid) -> Option<Placement> {
        self.read().get(instance).cloned()
    }

    /// How many instances are placed on `cell`. A scan: for the rare register request a cell
    /// makes itself, not for hot paths.
    pub fn count_on(&self, cell: &CellId) -> usize {
        self.read().values().filter(|p| p.cell_id == *cell).count()
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
