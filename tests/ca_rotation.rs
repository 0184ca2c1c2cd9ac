//! CA rotation in a running service, without sidecars in the way: an intermediate rotated on
//! request signs new leaves at once (checked by openssl and webpki) and is what a restart
//! loads; a new root that a sidecar never acknowledges signs after the maximum wait, and says
//! so; a retired root leaves the bundle when pruned; every step is in the ledger. The
//! schedule runs on a manual clock the test moves: hours pass in no time, while the store
//! underneath does its real I/O.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use idmint::agent;
use idmint::api::{Authority, SignRequest, SignedCert};
use idmint::app::Runtime;
use idmint::ca::maintenance::{CaControl, ControlError};
use idmint::ca::rotate::Target;
use idmint::ca::Init;
use idmint::clock::{Clock, ManualClock};
use idmint::store::{EntryKind, LedgerFilter};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

async fn runtime(dir: &std::path::Path, overrides: &[(&str, &str)], clock: Clock) -> Runtime {
    Runtime::start_with_clock(config_in(dir, overrides), Init::CreateIfMissing, clock)
        .await
        .expect("runtime starts")
}

/// Starts rotation with `fleet` standing in for the sidecars' acknowledgements.
fn maintain(rt: &Runtime, fleet: watch::Receiver<Option<u64>>) -> (CaControl, CancellationToken) {
    let m = maintenance(rt, fleet);
    let cancel = CancellationToken::new();
    let (control, task) = m.start(cancel.clone());
    tokio::spawn(task);
    (control, cancel)
}

async fn issue(rt: &Runtime) -> SignedCert {
    rt.issuance
        .sign(SignRequest {
            placement: placement(),
            csr: agent::new_key_and_csr().unwrap().1,
            ttl: None,
        })
        .await
        .unwrap()
}

/// The events of the X.509 CA (those of the JWT-SVID keys, also CA events, left out).
async fn ca_events(rt: &Runtime) -> Vec<String> {
    rt.audit
        .list(&LedgerFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == EntryKind::Ca)
        .map(|e| e.record.reason.unwrap())
        .filter(|reason| !reason.starts_with("JWT-SVID signing key"))
        .collect()
}

fn roots(rt: &Runtime) -> Vec<Vec<u8>> {
    rt.ca.roots().into_iter().map(|r| r.der).collect()
}

#[tokio::test]
async fn an_intermediate_rotated_on_request_signs_at_once_and_is_what_a_restart_loads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), &[], Clock::system()).await;
    let (_fleet, fleet_rx) = watch::channel(None);
    let (control, cancel) = maintain(&rt, fleet_rx);
    let before = issue(&rt).await;
    let old = rt.ca.intermediate();

    let said = control.rotate(Target::Intermediate).await.unwrap();
    assert!(
        said.iter().any(|s| s.contains("intermediate activated")),
        "{said:?}"
    );
    let new = rt.ca.intermediate();
    assert_ne!(new.fingerprint, old.fingerprint);
    let after = issue(&rt).await;
    assert_eq!(
        after.chain_der[0], new.der,
        "new leaves carry the new chain"
    );
    for cert in [&before, &after] {
        let (ok, out) = openssl_verify(dir.path(), &roots(&rt), &cert.chain_der, &cert.cert_der);
        assert!(ok, "{out}");
        webpki_verify(&roots(&rt), &cert.chain_der, &cert.cert_der).unwrap();
        strict_der::certificate("leaf", &cert.cert_der);
        strict_der::certificate("intermediate", &cert.chain_der[0]);
    }
    let events = ca_events(&rt).await;
    assert_eq!(
        events,
        [
            "intermediate prepared",
            "intermediate retired",
            "intermediate activated: new leaves are signed by it"
        ]
    );

    cancel.cancel();
    rt.shutdown().await;
    let rt = runtime(dir.path(), &[], Clock::system()).await;
    assert_eq!(rt.ca.intermediate().fingerprint, new.fingerprint);
    assert_eq!(issue(&rt).await.chain_der[0], new.der);
    // A leaf of the retired intermediate, revoked after the restart, is in that
    // intermediate's CRL: its key is still held, sealed, and every intermediate with live
    // leaves has a CRL.
    rt.revocations
        .revoke(
            &idmint::server::revocations::Target::Serial(before.serial_hex.clone()),
            idmint::ca::crl::Reason::Superseded,
            "test",
        )
        .await
        .unwrap();
    let revoked = rt.revocations.now();
    let issuers: Vec<&str> = revoked
        .crls
        .iter()
        .map(|c| c.issuer_fingerprint.as_str())
        .collect();
    assert!(issuers.contains(&old.fingerprint.as_str()), "{issuers:?}");
    assert!(issuers.contains(&new.fingerprint.as_str()), "{issuers:?}");
    let old_crl = revoked
        .crls
        .iter()
        .find(|c| c.issuer_fingerprint == old.fingerprint)
        .unwrap();
    let read = python_strict(dir.path(), &[PyItem::crl(&old_crl.der, &old.der)]);
    assert_eq!(read[0]["serials"][0], before.serial_hex);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_root_nobody_acknowledges_signs_after_the_maximum_wait_and_the_old_one_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let time = ManualClock::new(Clock::system().now());
    let rt = runtime(
        dir.path(),
        &[
            ("ca.root_activation_max_wait", "1h"),
            ("ca.leaf_ttl", "1h"),
            ("ca.clock_skew", "30s"),
        ],
        time.clock(),
    )
    .await;
    // One sidecar that never acknowledges anything.
    let (_fleet, fleet_rx) = watch::channel(Some(0));
    let (control, cancel) = maintain(&rt, fleet_rx);
    let old_root = rt.ca.roots();
    let old_leaf = issue(&rt).await;

    let said = control.rotate(Target::Root).await.unwrap();
    assert!(said.iter().any(|s| s.contains("root prepared")), "{said:?}");
    assert_eq!(
        rt.ca.roots().len(),
        2,
        "the new root is in the bundle at once"
    );
    let err = control.rotate(Target::Root).await.unwrap_err();
    assert!(
        matches!(err, ControlError::RootRotationUnderWay { .. })
            && err.to_string().contains("under way"),
        "{err}"
    );
    time.advance(Duration::from_secs(59 * 60));
    control.apply_due().await.unwrap();
    assert_eq!(
        issue(&rt).await.chain_der[0],
        old_leaf.chain_der[0],
        "still signing under the old root a minute before the maximum wait"
    );

    time.advance(Duration::from_secs(61));
    control.apply_due().await.unwrap();
    let new_leaf = issue(&rt).await;
    assert_ne!(new_leaf.chain_der[0], old_leaf.chain_der[0], "activated");
    let events = ca_events(&rt).await;
    assert!(
        events.iter().any(|e| e.contains("after the maximum wait")),
        "{events:?}"
    );
    let new_root: Vec<Vec<u8>> = rt
        .ca
        .roots()
        .into_iter()
        .filter(|r| r.fingerprint != old_root[0].fingerprint)
        .map(|r| r.der)
        .collect();
    assert_eq!(new_root.len(), 1);
    let at = Some(rt.clock.now().unix_timestamp());
    let (ok, out) = openssl_verify_at(
        dir.path(),
        &new_root,
        &new_leaf.chain_der,
        &new_leaf.cert_der,
        at,
    );
    assert!(ok, "new leaves chain to the new root alone: {out}");
    strict_der::certificate("rotated root", &new_root[0]);
    strict_der::certificate("its intermediate", &new_leaf.chain_der[0]);
    let (ok, _) = openssl_verify_at(
        dir.path(),
        &new_root,
        &old_leaf.chain_der,
        &old_leaf.cert_der,
        at,
    );
    assert!(!ok, "old leaves do not");

    // The old root stays while a leaf under it can still be valid: the last one was issued
    // just before activation, for an hour, with 30 s of clock-skew allowance.
    time.advance(Duration::from_secs(3600));
    control.apply_due().await.unwrap();
    assert_eq!(rt.ca.roots().len(), 2, "pruned while old leaves were valid");
    time.advance(Duration::from_secs(31));
    control.apply_due().await.unwrap();
    assert_eq!(rt.ca.roots().len(), 1, "old root pruned");
    assert_eq!(rt.ca.roots()[0].der, new_root[0]);
    assert!(ca_events(&rt)
        .await
        .iter()
        .any(|e| e.starts_with("root pruned")));
    cancel.cancel();
    rt.shutdown().await;
}
