//! The keeper on paused time: a fake CA hands out certificates of a given lifetime, and
//! hours of renewals take no time at all.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use time::macros::datetime;
use tokio::task::JoinSet;

use super::*;
use crate::renewal::schedule::RETRY_MAX;

const START: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);
const HOUR: Duration = Duration::from_secs(3600);

struct FakeCert {
    serial: String,
    not_after: OffsetDateTime,
    issuer: String,
}

impl Kept for FakeCert {
    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
    fn issuer_sha256(&self) -> Option<&str> {
        Some(&self.issuer)
    }
    fn serial_hex(&self) -> &str {
        &self.serial
    }
}

/// A CA that signs for `lifetime` with `issuer`, or fails while `down`; it notes when it
/// was asked.
struct FakeCa {
    clock: Clock,
    lifetime: Duration,
    issuer: Mutex<String>,
    down: AtomicBool,
    asked: Mutex<Vec<OffsetDateTime>>,
    renewals: AtomicU32,
    failures: AtomicU32,
}

impl FakeCa {
    fn new(clock: Clock, lifetime: Duration) -> Arc<FakeCa> {
        Arc::new(FakeCa {
            clock,
            lifetime,
            issuer: Mutex::new("intermediate-1".into()),
            down: AtomicBool::new(false),
            asked: Mutex::new(Vec::new()),
            renewals: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        })
    }

    fn asked(&self) -> Vec<Duration> {
        let asked = self.asked.lock().unwrap();
        asked.iter().map(|t| (*t - START).unsigned_abs()).collect()
    }

    fn cert(&self, serial: &str) -> FakeCert {
        FakeCert {
            serial: serial.into(),
            not_after: self.clock.now() + self.lifetime,
            issuer: self.issuer.lock().unwrap().clone(),
        }
    }
}

impl Renewer for Arc<FakeCa> {
    type Cert = FakeCert;
    type Error = &'static str;

    async fn obtain(&self) -> Result<FakeCert, &'static str> {
        let mut asked = self.asked.lock().unwrap();
        asked.push(self.clock.now());
        if self.down.load(Ordering::SeqCst) {
            return Err("the CA is down");
        }
        Ok(self.cert(&asked.len().to_string()))
    }

    fn renewed(&self) {
        self.renewals.fetch_add(1, Ordering::SeqCst);
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::SeqCst);
    }
}

struct Running {
    ca: Arc<FakeCa>,
    certs: watch::Receiver<Option<Arc<FakeCert>>>,
    attempts: watch::Receiver<Attempts>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    fn start(keeper: Keeper<Arc<FakeCa>>, ca: Arc<FakeCa>) -> Running {
        let (certs, attempts) = (keeper.certificates(), keeper.attempts());
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(keeper.run(cancel.clone()));
        Running {
            ca,
            certs,
            attempts,
            cancel,
            tasks,
        }
    }

    fn serial(&self) -> Option<String> {
        self.certs.borrow().as_ref().map(|c| c.serial.clone())
    }

    /// Lets `d` of paused time pass.
    async fn live(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(1), self.tasks.join_next()).await;
        assert!(
            matches!(ended, Ok(Some(Ok(())))),
            "the keeper ends when cancelled"
        );
    }
}

fn keeper(lifetime: Duration) -> (Keeper<Arc<FakeCa>>, Arc<FakeCa>) {
    let clock = Clock::following_tokio(START);
    let ca = FakeCa::new(clock.clone(), lifetime);
    let keeper = Keeper::new(ca.clone(), "test certificate", Schedule::default(), clock);
    (keeper, ca)
}

#[tokio::test(start_paused = true)]
async fn certificates_are_obtained_at_once_then_renewed_inside_the_jitter_window() {
    let (keeper, ca) = keeper(HOUR);
    let k = Running::start(keeper, ca);
    k.live(Duration::from_secs(10 * 3600)).await;
    let asked = k.ca.asked();
    assert_eq!(asked[0], Duration::ZERO, "the first certificate at once");
    // Each renewal falls between 40% and 60% of the previous certificate's hour.
    for pair in asked.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(24 * 60) && gap < Duration::from_secs(36 * 60),
            "{gap:?} in {asked:?}"
        );
    }
    assert!((17..=26).contains(&asked.len()), "{asked:?}");
    assert_eq!(
        k.ca.renewals.load(Ordering::SeqCst) as usize,
        asked.len() - 1
    );
    assert_eq!(k.serial(), Some(asked.len().to_string()));
    let attempts = k.attempts.borrow().clone();
    assert_eq!((attempts.failures, attempts.last_error), (0, None));
    assert!(attempts.next.unwrap() > k.ca.clock.now());
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_shorter_than_the_certificate_never_lets_it_lapse() {
    let (keeper, ca) = keeper(HOUR);
    let k = Running::start(keeper, ca);
    k.live(Duration::from_secs(60)).await;
    assert_eq!(k.serial().as_deref(), Some("1"));
    let not_after = k.certs.borrow().as_ref().unwrap().not_after;

    // The CA goes down before the renewal point and stays down until 30 s before expiry.
    k.ca.down.store(true, Ordering::SeqCst);
    let back = not_after - Duration::from_secs(30);
    k.live(k.ca.clock.until(back)).await;
    assert_eq!(
        k.serial().as_deref(),
        Some("1"),
        "the current certificate stays in service"
    );
    let during = k.attempts.borrow().clone();
    assert_eq!(during.last_error.as_deref(), Some("the CA is down"));
    assert!(during.failures >= 5, "{during:?}");
    // Retries have shrunk to fit what is left: within a quarter of the last 30 s.
    assert!(
        during.next.unwrap() <= back + Duration::from_secs(8),
        "{during:?}"
    );

    k.ca.down.store(false, Ordering::SeqCst);
    k.live(Duration::from_secs(10)).await;
    let renewed = k.certs.borrow().clone().unwrap();
    assert_ne!(renewed.serial, "1");
    assert!(
        k.ca.asked().last().unwrap() < &(not_after - START).unsigned_abs(),
        "renewed before the old certificate expired"
    );
    let after = k.attempts.borrow().clone();
    assert_eq!((after.failures, after.last_error), (0, None));
    assert_eq!(
        k.ca.failures.load(Ordering::SeqCst) as usize,
        k.ca.asked().len() - 2,
        "every attempt but the first and the last failed"
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_by_doubling_and_keep_trying_after_expiry() {
    let (keeper, ca) = keeper(Duration::from_secs(20));
    ca.down.store(true, Ordering::SeqCst);
    let k = Running::start(keeper, ca);
    k.live(Duration::from_secs(120)).await;
    assert_eq!(k.serial(), None, "nothing to serve yet");
    let asked = k.ca.asked();
    let gaps: Vec<Duration> = asked.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps[0], RETRY_MIN);
    assert_eq!(gaps[1], RETRY_MIN * 2);
    assert!(gaps.windows(2).all(|w| w[0] <= w[1]), "{gaps:?}");
    assert_eq!(*gaps.last().unwrap(), RETRY_MAX);

    // Served once, then expired while the CA is down: attempts go on, paced by the doubling.
    k.ca.down.store(false, Ordering::SeqCst);
    k.live(RETRY_MAX).await;
    assert!(k.serial().is_some());
    k.ca.down.store(true, Ordering::SeqCst);
    let before = k.ca.asked().len();
    k.live(Duration::from_secs(300)).await;
    let late: Vec<Duration> = k.ca.asked()[before..]
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert_eq!(*late.last().unwrap(), RETRY_MAX, "{late:?}");
    assert!(late.len() < 30, "not a hot loop: {late:?}");
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_signing_intermediate_renews_at_once_and_the_same_one_does_not() {
    let (keeper, ca) = keeper(HOUR);
    let (signer, signer_rx) = watch::channel(String::new());
    let k = Running::start(keeper.following_signer(signer_rx), ca);
    k.live(Duration::from_secs(60)).await;
    assert_eq!(k.ca.asked().len(), 1);

    // The CA announces the intermediate that issued the certificate: nothing to do.
    signer.send_replace("intermediate-1".into());
    k.live(Duration::from_secs(1)).await;
    assert_eq!(k.ca.asked().len(), 1);

    // It rotates: the certificate is renewed within the second, under the new one.
    *k.ca.issuer.lock().unwrap() = "intermediate-2".into();
    signer.send_replace("intermediate-2".into());
    k.live(Duration::from_secs(1)).await;
    assert_eq!(k.ca.asked().len(), 2);
    assert_eq!(k.ca.asked()[1], Duration::from_secs(61));
    let cert = k.certs.borrow().clone().unwrap();
    assert_eq!(cert.issuer, "intermediate-2");

    // The CA's announcements end: the keeper goes on with its schedule.
    drop(signer);
    k.live(HOUR).await;
    assert!(k.ca.asked().len() >= 3);
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_revoked_certificate_is_replaced_at_once_and_other_revocations_change_nothing() {
    let (keeper, ca) = keeper(HOUR);
    let (revoked, revoked_rx) = watch::channel(Arc::default());
    let k = Running::start(keeper.following_revocations(revoked_rx), ca);
    k.live(Duration::from_secs(60)).await;
    assert_eq!(k.ca.asked().len(), 1);
    let first = k.serial().unwrap();

    // Another certificate is revoked: nothing to do.
    revoked.send_replace(Arc::new(["someone-else".to_string()].into()));
    k.live(Duration::from_secs(1)).await;
    assert_eq!(k.ca.asked().len(), 1);

    // This one is: replaced within the second.
    revoked.send_replace(Arc::new(["someone-else".to_string(), first.clone()].into()));
    k.live(Duration::from_secs(1)).await;
    assert_eq!(k.ca.asked().len(), 2);
    assert_ne!(k.serial().unwrap(), first);

    // The list stays: the new certificate is not in it, so it is kept until its time.
    revoked.send_replace(Arc::new(["someone-else".to_string(), first].into()));
    k.live(Duration::from_secs(60)).await;
    assert_eq!(k.ca.asked().len(), 2);
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_certificate_it_starts_with_is_renewed_on_its_own_schedule() {
    let clock = Clock::following_tokio(START);
    let ca = FakeCa::new(clock.clone(), HOUR);
    // In service for 10 minutes of its hour: renewed between 24 and 36 minutes in.
    let since = START - Duration::from_secs(600);
    let fresh = FakeCert {
        serial: "loaded".into(),
        not_after: since + HOUR,
        issuer: "intermediate-1".into(),
    };
    let keeper = Keeper::new(ca.clone(), "loaded", Schedule::default(), clock.clone());
    let k = Running::start(keeper.starting_with(fresh, since), ca.clone());
    k.live(Duration::from_secs(13 * 60)).await;
    assert!(k.ca.asked().is_empty(), "{:?}", k.ca.asked());
    assert_eq!(k.serial().as_deref(), Some("loaded"));
    k.live(Duration::from_secs(13 * 60)).await;
    assert_eq!(k.ca.asked().len(), 1);
    k.stop().await;

    // One past its renewal point is renewed at once.
    let stale = FakeCert {
        serial: "stale".into(),
        not_after: START + Duration::from_secs(60),
        issuer: "intermediate-1".into(),
    };
    let keeper = Keeper::new(ca.clone(), "stale", Schedule::default(), clock);
    let k = Running::start(keeper.starting_with(stale, START - HOUR), ca);
    let asked_before = k.ca.asked().len();
    k.live(Duration::from_secs(1)).await;
    assert_eq!(k.ca.asked().len(), asked_before + 1);
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_certificate_cut_short_is_not_renewed_in_a_hot_loop() {
    // A CA whose intermediate expires in 2 s hands out certificates ending then.
    let (keeper, ca) = keeper(HOUR);
    let cut_at = START + Duration::from_secs(2);
    struct Capped(Arc<FakeCa>, OffsetDateTime);
    impl Renewer for Capped {
        type Cert = FakeCert;
        type Error = &'static str;
        async fn obtain(&self) -> Result<FakeCert, &'static str> {
            let mut cert = self.0.obtain().await?;
            cert.not_after = cert.not_after.min(self.1);
            Ok(cert)
        }
    }
    let capped = Keeper::new(
        Capped(ca.clone(), cut_at),
        "capped",
        Schedule::default(),
        keeper.clock.clone(),
    );
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(capped.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Halving what is left, never more often than every RETRY_MIN: a handful, not thousands.
    let asked = ca.asked().len();
    assert!((3..=11).contains(&asked), "{asked}");
    cancel.cancel();
    tasks.join_next().await;
}
