//! One cell's allow lists as a sequence of [`AllowUpdate`]s: the lists of the apps placed on
//! the cell, each sent again only when it changed, so an agent hears only of what concerns it.

use std::collections::{HashMap, VecDeque};

use tokio::sync::broadcast;

use super::policies::{Changed, Policies};
use super::registry::PlacementWatch;
use crate::ids::Guid;
use crate::placement::{Placement, PlacementUpdate};
use crate::policy::{AllowList, AllowUpdate};

/// An app placed on the cell.
struct Here {
    space: Option<Guid>,
    instances: usize,
}

/// Follows one cell (or every cell): see [`AllowWatch::next`].
pub struct AllowWatch {
    policies: Policies,
    placements: PlacementWatch,
    changes: broadcast::Receiver<Changed>,
    here: HashMap<Guid, Here>,
    /// The last list sent for each app here.
    sent: HashMap<Guid, AllowList>,
    ready: VecDeque<AllowUpdate>,
}

impl AllowWatch {
    /// Follows the apps `placements` bring. Changes are listened to from here on, so none
    /// falls between this and the first snapshot.
    pub fn new(policies: Policies, placements: PlacementWatch) -> AllowWatch {
        AllowWatch {
            changes: policies.changes(),
            policies,
            placements,
            here: HashMap::new(),
            sent: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next update: a snapshot first (and again after the placements start over), then
    /// each app's new list when it changes, an app's list when it comes to the cell and its
    /// departure when its last instance leaves.
    pub async fn next(&mut self) -> AllowUpdate {
        loop {
            if let Some(update) = self.ready.pop_front() {
                return update;
            }
            tokio::select! {
                update = self.placements.next() => self.placed(update),
                changed = self.changes.recv() => match changed {
                    Ok(Changed::Apps(apps)) => {
                        for app in apps.iter() {
                            self.refresh(app);
                        }
                    }
                    Ok(Changed::All) => self.refresh_all(),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "an allow-list follower fell behind; checking every app");
                        self.refresh_all();
                    }
                    // The watch holds the policies, and with them the sender.
                    Err(broadcast::error::RecvError::Closed) => unreachable!("the sender is held"),
                },
            }
        }
    }

    fn placed(&mut self, update: PlacementUpdate) {
        match update {
            PlacementUpdate::Snapshot(all) => {
                self.here.clear();
                for p in &all {
                    self.arrive(p);
                }
                self.sent = self
                    .here
                    .iter()
                    .map(|(app, h)| (app.clone(), self.policies.allow_list(app, h.space.as_ref())))
                    .collect();
                let mut lists: Vec<(Guid, AllowList)> = self
                    .sent
                    .iter()
                    .map(|(a, l)| (a.clone(), l.clone()))
                    .collect();
                lists.sort_by(|a, b| a.0.cmp(&b.0));
                // A snapshot replaces what the follower held, so what was queued is moot.
                self.ready.clear();
                self.ready.push_back(AllowUpdate::Snapshot(lists));
            }
            PlacementUpdate::Registered(p) => {
                if self.arrive(&p) {
                    self.refresh(&p.app_guid);
                }
            }
            PlacementUpdate::Deregistered(p) => {
                let Some(h) = self.here.get_mut(&p.app_guid) else {
                    return;
                };
                h.instances = h.instances.saturating_sub(1);
                if h.instances == 0 {
                    self.here.remove(&p.app_guid);
                    self.sent.remove(&p.app_guid);
                    self.ready.push_back(AllowUpdate::Gone(p.app_guid));
                }
            }
        }
    }

    /// Counts an instance of `p`'s app here. Returns whether the app is new here.
    fn arrive(&mut self, p: &Placement) -> bool {
        let h = self.here.entry(p.app_guid.clone()).or_insert(Here {
            space: p.space_guid.clone(),
            instances: 0,
        });
        h.instances += 1;
        h.instances == 1
    }

    /// Queues `app`'s list if it is here and differs from the one sent.
    fn refresh(&mut self, app: &Guid) {
        let Some(h) = self.here.get(app) else {
            return;
        };
        let list = self.policies.allow_list(app, h.space.as_ref());
        if self.sent.get(app) == Some(&list) {
            return;
        }
        self.sent.insert(app.clone(), list.clone());
        self.ready.push_back(AllowUpdate::Set(app.clone(), list));
    }

    fn refresh_all(&mut self) {
        let apps: Vec<Guid> = self.here.keys().cloned().collect();
        for app in &apps {
            self.refresh(app);
        }
    }
}
