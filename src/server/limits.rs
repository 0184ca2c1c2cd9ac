//! What one client may cost the server: handshakes in progress before anyone is authenticated,
//! for each cell its sign requests per second, and for each cell and each admin API caller the
//! ledger records of its denials. A compromised cell that asks in a loop for what it may not
//! have gets a bounded number of records: identical denials within a minute are recorded once,
//! at most `denial_records` a minute are recorded one by one, and whatever was held back
//! (throttled requests included) goes into one summary record per client per minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ids::CellId;
use crate::message_limit::MessageLimit;
use crate::store::{EntryKind, LedgerRecord};

/// The window identical denials are recorded once in, and summaries are made for.
const WINDOW_MS: i64 = 60_000;

/// The server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Server API handshakes in progress at once (`server.max_handshakes`); past that,
    /// connections wait in the listen backlog.
    pub max_handshakes: usize,
    /// Sign requests a cell may make per second, sustained (`server.cell_sign_rate`).
    pub sign_rate: u32,
    /// How many it may make at once after a quiet spell (`server.cell_sign_burst`): a cell
    /// starting up asks for every instance on it together.
    pub sign_burst: u32,
    /// Denials of one client (a cell, or an admin API caller) recorded one by one per minute
    /// (`server.denial_records`).
    pub denial_records: u32,
    /// Instances a cell may register on itself (`server.cell_instances`); the orchestrator
    /// and admins are not held to it.
    pub cell_instances: u32,
    /// The largest server API request message read, in bytes (`server.max_message`).
    pub max_message: usize,
}

/// The limits' state for every cell that asked, and how often they held.
pub struct Limits {
    settings: Settings,
    /// By cell id, or by an admin API caller's SPIFFE ID.
    clients: Mutex<HashMap<String, ClientState>>,
    throttled: AtomicU64,
    denials_held_back: AtomicU64,
    handshakes_full: AtomicU64,
    cell_instances_full: AtomicU64,
    message_too_large: Arc<AtomicU64>,
}

/// Whom a client's state is about, for its summary.
#[derive(Clone)]
enum Who {
    Cell(CellId),
    AdminCaller,
}

struct ClientState {
    who: Who,
    signs: Bucket,
    denial_records: Bucket,
    /// When each (instance, reason) denial was last recorded one by one.
    recorded: HashMap<(String, String), i64>,
    held_back: HeldBack,
}

/// What a cell did that was not recorded one by one since `since_ms`.
#[derive(Default)]
struct HeldBack {
    since_ms: i64,
    throttled: u64,
    denied: u64,
    last_reason: Option<String>,
}

/// A token bucket: `tokens` refill at a rate up to a ceiling.
#[derive(Default)]
struct Bucket {
    tokens: f64,
    at_ms: Option<i64>,
}

impl Bucket {
    /// Takes a token if there is one, refilling at `per_ms` up to `ceiling` first; a new
    /// bucket starts full.
    fn take(&mut self, per_ms: f64, ceiling: f64, now_ms: i64) -> bool {
        let elapsed = match self.at_ms {
            Some(at) => (now_ms - at).max(0) as f64,
            None => f64::INFINITY,
        };
        self.tokens = (self.tokens + elapsed * per_ms).min(ceiling);
        self.at_ms = Some(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Limits {
    /// Limits as `settings` say.
    pub fn new(settings: Settings) -> Limits {
        Limits {
            settings,
            clients: Mutex::default(),
            throttled: AtomicU64::new(0),
            denials_held_back: AtomicU64::new(0),
            handshakes_full: AtomicU64::new(0),
            cell_instances_full: AtomicU64::new(0),
            message_too_large: Arc::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The server API's message limit, counted here.
    pub fn message_limit(&self) -> MessageLimit {
        MessageLimit::new(
            self.settings.max_message,
            "server.max_message",
            self.message_too_large.clone(),
        )
    }

    /// Counts a time the server API had `max_handshakes` in progress and let new
    /// connections wait.
    pub fn handshakes_full(&self) {
        self.handshakes_full.fetch_add(1, Ordering::Relaxed);
    }

    fn with_client<T>(
        &self,
        key: &str,
        who: impl FnOnce() -> Who,
        now_ms: i64,
        f: impl FnOnce(&mut ClientState) -> T,
    ) -> T {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: the key is copied once, not on every request.
        if !clients.contains_key(key) {
            clients.insert(key.to_string(), ClientState::new(who()));
        }
        let state = clients.get_mut(key).expect("inserted above");
        if state.held_back.throttled == 0 && state.held_back.denied == 0 {
            state.held_back.since_ms = now_ms;
        }
        f(state)
    }

    /// Counts a cell's registration refused by `cell_instances`.
    pub fn cell_instances_full(&self) {
        self.cell_instances_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `cell` may make another sign request now; if not, it is counted for the
    /// cell's summary.
    pub fn admit_sign(&self, cell: &CellId, now_ms: i64) -> bool {
        let s = self.settings;
        let who = || Who::Cell(cell.clone());
        let admitted = self.with_client(cell.as_str(), who, now_ms, |state| {
            let admitted = state.signs.take(
                f64::from(s.sign_rate) / 1000.0,
                f64::from(s.sign_burst),
                now_ms,
            );
            if !admitted {
                state.held_back.throttled += 1;
            }
            admitted
        });
        if !admitted {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Whether this denial of `cell` is recorded one by one; if not, it is counted for the
    /// cell's summary.
    pub fn record_denial(&self, cell: &CellId, instance: &str, reason: &str, now_ms: i64) -> bool {
        let who = || Who::Cell(cell.clone());
        self.denial(cell.as_str(), who, instance, reason, now_ms)
    }

    /// As [`Limits::record_denial`], for an admin API request `caller` (a SPIFFE ID) was
    /// refused: `what` is the request, `reason` why.
    pub fn record_admin_refusal(
        &self,
        caller: &str,
        what: &str,
        reason: &str,
        now_ms: i64,
    ) -> bool {
        self.denial(caller, || Who::AdminCaller, what, reason, now_ms)
    }

    fn denial(
        &self,
        key: &str,
        who: impl FnOnce() -> Who,
        about: &str,
        reason: &str,
        now_ms: i64,
    ) -> bool {
        let s = self.settings;
        let recorded = self.with_client(key, who, now_ms, |state| {
            state.recorded.retain(|_, at| now_ms - *at < WINDOW_MS);
            let key = (about.to_string(), reason.to_string());
            let fresh = !state.recorded.contains_key(&key);
            let per_ms = f64::from(s.denial_records) / WINDOW_MS as f64;
            if fresh
                && state
                    .denial_records
                    .take(per_ms, f64::from(s.denial_records), now_ms)
            {
                state.recorded.insert(key, now_ms);
                return true;
            }
            state.held_back.denied += 1;
            state.held_back.last_reason = Some(reason.to_string());
            false
        });
        if !recorded {
            self.denials_held_back.fetch_add(1, Ordering::Relaxed);
        }
        recorded
    }

    /// One summary record for each client that had something held back for a minute (for
    /// every such client, however long, when `all`), and that client's count starts again.
    pub fn summaries(&self, now: time::OffsetDateTime, all: bool) -> Vec<LedgerRecord> {
        let now_ms = crate::clock::unix_ms(now);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        clients.retain(|key, state| {
            let held = &mut state.held_back;
            let due =
                held.throttled + held.denied > 0 && (all || now_ms - held.since_ms >= WINDOW_MS);
            if due {
                out.push(summary(key, &state.who, held, now_ms, now));
                *held = HeldBack::default();
            }
            // A client quiet for a window holds nothing worth keeping: its buckets are full again.
            let quiet = state.signs.at_ms.is_none_or(|at| now_ms - at >= WINDOW_MS)
                && state
                    .denial_records
                    .at_ms
                    .is_none_or(|at| now_ms - at >= WINDOW_MS);
            !(quiet && held.throttled + held.denied == 0)
        });
        out
    }

    /// `idmint_limit_hits_total` samples for the server's limits (the caller writes HELP and
    /// TYPE once for every part's samples).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (limit, n) in [
            ("cell_sign_rate", &self.throttled),
            ("denial_records", &self.denials_held_back),
            ("server_handshakes", &self.handshakes_full),
            ("cell_instances", &self.cell_instances_full),
            ("server_message", &*self.message_too_large),
        ] {
            let _ = writeln!(
                out,
                "idmint_limit_hits_total{{limit=\"{limit}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

impl ClientState {
    fn new(who: Who) -> ClientState {
        ClientState {
            who,
            signs: Bucket::default(),
            denial_records: Bucket::default(),
            recorded: HashMap::new(),
            held_back: HeldBack::default(),
        }
    }
}

fn summary(
    key: &str,
    who: &Who,
    held: &HeldBack,
    now_ms: i64,
    now: time::OffsetDateTime,
) -> LedgerRecord {
    let seconds = (now_ms - held.since_ms).max(0) / 1000;
    let mut parts = Vec::new();
    if held.throttled > 0 {
        parts.push(format!(
            "{} sign requests refused over its rate (server.cell_sign_rate)",
            held.throttled
        ));
    }
    if held.denied > 0 {
        parts.push(format!(
            "{} denials not recorded one by one (repeats, or over server.denial_records); the last: {}",
            held.denied,
            held.last_reason.as_deref().unwrap_or("")
        ));
    }
    let (cell_id, named) = match who {
        Who::Cell(cell) => (Some(cell.to_string()), format!("cell {cell}")),
        Who::AdminCaller => (None, format!("admin API caller {key}")),
    };
    LedgerRecord {
        cell_id,
        reason: Some(format!(
            "{named}, in the last {seconds} s: {}",
            parts.join("; ")
        )),
        ..LedgerRecord::bare(EntryKind::Denied, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, records: u32) -> Limits {
        Limits::new(Settings {
            max_handshakes: 1,
            sign_rate: rate,
            sign_burst: burst,
            denial_records: records,
            cell_instances: 1,
            max_message: 1024,
        })
    }

    #[test]
    fn a_cell_gets_its_burst_then_its_rate() {
        let l = limits(10, 5, 60);
        let cell: CellId = "cell-1".parse().unwrap();
        let other: CellId = "cell-2".parse().unwrap();
        let admitted = (0..20).filter(|_| l.admit_sign(&cell, 1_000)).count();
        assert_eq!(admitted, 5);
        // Another cell is not held back by the first.
        assert!(l.admit_sign(&other, 1_000));
        // 100 ms at 10/s is one more.
        assert!(l.admit_sign(&cell, 1_100));
        assert!(!l.admit_sign(&cell, 1_100));
    }

    #[test]
    fn identical_denials_are_recorded_once_a_minute_and_the_rest_summarised() {
        let l = limits(1000, 1000, 3);
        let cell: CellId = "cell-1".parse().unwrap();
        assert!(l.record_denial(&cell, "i1", "not placed", 0));
        assert!(!l.record_denial(&cell, "i1", "not placed", 10));
        assert!(l.record_denial(&cell, "i2", "not placed", 20));
        assert!(l.record_denial(&cell, "i3", "not placed", 30));
        // Three a minute, whatever they are.
        assert!(!l.record_denial(&cell, "i4", "not placed", 40));
        let start = time::OffsetDateTime::UNIX_EPOCH;
        assert!(l.summaries(start, false).is_empty(), "not a minute yet");
        let later = start + time::Duration::seconds(61);
        let summaries = l.summaries(later, false);
        assert_eq!(summaries.len(), 1);
        let reason = summaries[0].reason.as_deref().unwrap();
        assert!(
            reason.contains("2 denials not recorded one by one"),
            "{reason}"
        );
        assert!(l.summaries(later, true).is_empty(), "counted once");
        // A minute on, the same denial is recorded again.
        assert!(l.record_denial(&cell, "i1", "not placed", 61_000));
    }
}
