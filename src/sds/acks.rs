//! Which trust bundle every connected sidecar has acknowledged: a new root signs only once
//! all of them have it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use tokio::sync::watch;

use super::names::SecretKind;

/// The bundle generations acknowledged by the open streams that carry trust bundles.
#[derive(Debug)]
pub struct BundleAcks {
    inner: Mutex<Inner>,
    lowest: watch::Sender<Option<u64>>,
    /// Counts every change of any stream's acknowledgement.
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Stream → the generation it last acknowledged (0: none yet).
    streams: HashMap<u64, u64>,
    /// Generation → how many streams are at it, so the lowest is found without a scan.
    at: BTreeMap<u64, usize>,
    /// When the lowest acknowledged generation last reached `current`.
    in_sync_since: Option<Instant>,
    current: u64,
}

impl Default for BundleAcks {
    fn default() -> Self {
        BundleAcks {
            inner: Mutex::new(Inner::default()),
            lowest: watch::Sender::new(None),
            changes: watch::Sender::new(0),
        }
    }
}

/// One stream's entry; removed when dropped.
#[derive(Debug)]
pub struct AckSlot {
    board: Arc<BundleAcks>,
    id: u64,
}

impl BundleAcks {
    /// Adds a stream that carries a trust bundle and has acknowledged none yet (generation 0;
    /// real generations start at 1).
    pub fn register(self: &Arc<Self>) -> AckSlot {
        let mut i = self.lock();
        let id = i.next_id;
        i.next_id += 1;
        i.streams.insert(id, 0);
        *i.at.entry(0).or_default() += 1;
        self.publish(&mut i);
        self.changes.send_modify(|n| *n += 1);
        AckSlot {
            board: self.clone(),
            id,
        }
    }

    /// Keeps a stream's `slot` in step with what it subscribes to: a place among the
    /// acknowledgements while any of `kinds` is a trust bundle, none otherwise. Returns
    /// whether it has one.
    pub fn follow<'a>(
        self: &Arc<Self>,
        slot: &mut Option<AckSlot>,
        kinds: impl IntoIterator<Item = &'a SecretKind>,
    ) -> bool {
        let wanted = kinds.into_iter().any(|k| *k != SecretKind::Certificate);
        match (wanted, slot.is_some()) {
            (true, false) => *slot = Some(self.register()),
            (false, true) => *slot = None,
            _ => {}
        }
        wanted
    }

    /// The lowest generation every open bundle stream has acknowledged; `None` when there is
    /// no such stream.
    pub fn lowest(&self) -> watch::Receiver<Option<u64>> {
        self.lowest.subscribe()
    }

    /// How many open bundle streams have acknowledged each generation (0: none yet), lowest
    /// first.
    pub fn held(&self) -> Vec<(u64, usize)> {
        self.lock().at.iter().map(|(g, n)| (*g, *n)).collect()
    }

    /// Wakes on every change of what the streams acknowledged.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells the board which bundle generation is current, for [`BundleAcks::seconds_behind`].
    pub fn set_current(&self, generation: u64) {
        let mut i = self.lock();
        i.current = generation;
        self.publish(&mut i);
    }

    /// Seconds since every open bundle stream last had the current bundle (0 when they all
    /// have it, or there is none).
    pub fn seconds_behind(&self) -> f64 {
        let i = self.lock();
        match (lowest(&i), i.in_sync_since) {
            (Some(low), Some(since)) if low < i.current => since.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, i: &mut Inner) {
        let low = lowest(i);
        if low.is_none_or(|l| l >= i.current) {
            i.in_sync_since = Some(Instant::now());
        }
        self.lowest.send_if_modified(|v| {
            let changed = *v != low;
            *v = low;
            changed
        });
    }

    fn set(&self, id: u64, generation: Option<u64>) {
        let mut i = self.lock();
        let old = match generation {
            Some(g) => i.streams.insert(id, g),
            None => i.streams.remove(&id),
        };
        if let Some(old) = old {
            if let Some(n) = i.at.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    i.at.remove(&old);
                }
            }
        }
        if let Some(g) = generation {
            *i.at.entry(g).or_default() += 1;
        }
        self.publish(&mut i);
        self.changes.send_modify(|n| *n += 1);
    }
}

fn lowest(i: &Inner) -> Option<u64> {
    i.at.keys().next().copied()
}

impl AckSlot {
    /// The stream acknowledged a response built from bundle `generation`.
    pub fn acked(&self, generation: u64) {
        self.board.set(self.id, Some(generation));
    }
}

impl Drop for AckSlot {
    fn drop(&mut self) {
        self.board.set(self.id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_acknowledgement_of_open_streams_is_published() {
        let board = Arc::new(BundleAcks::default());
        let low = board.lowest();
        assert_eq!(*low.borrow(), None);
        let a = board.register();
        let b = board.register();
        assert_eq!(*low.borrow(), Some(0));
        a.acked(3);
        assert_eq!(*low.borrow(), Some(0));
        b.acked(2);
        assert_eq!(*low.borrow(), Some(2));
        drop(b);
        assert_eq!(*low.borrow(), Some(3));
        drop(a);
        assert_eq!(*low.borrow(), None);
    }

    #[test]
    fn behind_only_while_some_stream_lacks_the_current_bundle() {
        let board = Arc::new(BundleAcks::default());
        let a = board.register();
        board.set_current(1);
        a.acked(1);
        assert_eq!(board.seconds_behind(), 0.0);
        board.set_current(2);
        assert!(board.seconds_behind() >= 0.0);
        a.acked(2);
        assert_eq!(board.seconds_behind(), 0.0);
    }
}
