//! The allow lists of the apps this agent serves, as the server sends them: one `watch` per
//! app, which the SDS servers of that app's instances follow, so a change to one app's list
//! wakes only that app's sidecars.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ids::Guid;
use crate::policy::{AllowList, AllowUpdate};

/// One app's list: `None` until the server has sent it.
pub type AllowReceiver = watch::Receiver<Option<Arc<AllowList>>>;

/// Every app's list. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct AllowLists {
    apps: Mutex<HashMap<Guid, watch::Sender<Option<Arc<AllowList>>>>>,
}

impl AllowLists {
    /// Follows `app`'s list; `None` until the server sends it.
    pub fn of(&self, app: &Guid) -> AllowReceiver {
        self.lock()
            .entry(app.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// `app`'s list now, if the server has sent one.
    pub fn get(&self, app: &Guid) -> Option<Arc<AllowList>> {
        self.lock().get(app).and_then(|tx| tx.borrow().clone())
    }

    /// Takes one update from the server. Only an app whose list changed wakes its sidecars.
    pub fn apply(&self, update: AllowUpdate) {
        let mut apps = self.lock();
        match update {
            AllowUpdate::Snapshot(all) => {
                let listed: HashMap<Guid, AllowList> = all.into_iter().collect();
                // An app the server no longer lists keeps its list while it is still served
                // here (its placement may be on its way out); one nobody follows is dropped.
                apps.retain(|app, tx| listed.contains_key(app) || tx.receiver_count() > 0);
                for (app, list) in listed {
                    set(&mut apps, app, list);
                }
            }
            AllowUpdate::Set(app, list) => set(&mut apps, app, list),
            AllowUpdate::Gone(app) => {
                if apps.get(&app).is_some_and(|tx| tx.receiver_count() == 0) {
                    apps.remove(&app);
                }
            }
        }
    }

    /// How many apps' lists are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `updates` until they end or `stop`.
    pub async fn follow(&self, updates: impl Stream<Item = AllowUpdate>, stop: CancellationToken) {
        tokio::pin!(updates);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                update = updates.next() => match update {
                    Some(u) => self.apply(u),
                    None => return,
                },
            }
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Guid, watch::Sender<Option<Arc<AllowList>>>>> {
        self.apps.lock().expect("never poisoned")
    }
}

fn set(
    apps: &mut HashMap<Guid, watch::Sender<Option<Arc<AllowList>>>>,
    app: Guid,
    list: AllowList,
) {
    let tx = apps.entry(app).or_insert_with(|| watch::channel(None).0);
    tx.send_if_modified(|held| {
        if held.as_deref() == Some(&list) {
            return false;
        }
        *held = Some(Arc::new(list));
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;

    fn g(n: u8) -> Guid {
        format!("{n:08x}-0000-4000-8000-000000000000")
            .parse()
            .unwrap()
    }

    fn list(ids: &[&str]) -> AllowList {
        AllowList {
            mode: Mode::Policy,
            sources: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn only_the_app_whose_list_changed_is_woken() {
        let lists = AllowLists::default();
        let (mut a, mut b) = (lists.of(&g(1)), lists.of(&g(2)));
        assert!(a.borrow().is_none(), "nothing until the server speaks");
        lists.apply(AllowUpdate::Snapshot(vec![
            (g(1), list(&["spiffe://td/app/x"])),
            (g(2), list(&[])),
        ]));
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        a.mark_unchanged();
        b.mark_unchanged();
        lists.apply(AllowUpdate::Set(g(2), list(&["spiffe://td/app/y"])));
        assert!(!a.has_changed().unwrap(), "A's list did not change");
        assert!(b.has_changed().unwrap());
        b.mark_unchanged();
        lists.apply(AllowUpdate::Set(g(2), list(&["spiffe://td/app/y"])));
        assert!(
            !b.has_changed().unwrap(),
            "the same list again wakes nobody"
        );
        // A snapshot equal to what is held wakes nobody either.
        lists.apply(AllowUpdate::Snapshot(vec![
            (g(1), list(&["spiffe://td/app/x"])),
            (g(2), list(&["spiffe://td/app/y"])),
        ]));
        assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());
    }

    #[test]
    fn lists_nobody_follows_are_dropped() {
        let lists = AllowLists::default();
        let followed = lists.of(&g(1));
        lists.apply(AllowUpdate::Set(g(2), list(&[])));
        assert_eq!(lists.len(), 2);
        lists.apply(AllowUpdate::Gone(g(2)));
        lists.apply(AllowUpdate::Gone(g(1)));
        assert_eq!(lists.len(), 1, "app 1 is still followed");
        drop(followed);
        lists.apply(AllowUpdate::Snapshot(vec![]));
        assert!(lists.is_empty());
    }
}
