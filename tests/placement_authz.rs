//! Placement authorization: a cell gets a certificate only for an instance the registry places
//! on it, and only as registered; every refusal is a ledger denial naming the cell, the
//! instance and the reason.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use idmint::agent;
use idmint::api::{Caller, Denial, Error, SignRequest};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::store::{EntryKind, LedgerFilter};
use time::OffsetDateTime;

fn request(p: idmint::placement::Placement) -> SignRequest {
    SignRequest {
        placement: p,
        csr: agent::new_key_and_csr().unwrap().1,
        ttl: None,
    }
}

#[tokio::test]
async fn a_cell_gets_only_its_own_instances_as_registered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(config_in(dir.path(), &[]), Init::CreateIfMissing)
        .await
        .unwrap();
    rt.registry.register(placement()).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let cell = |c: &str| Caller::Cell(c.parse().unwrap());

    // Another cell asking for cell-1's instance.
    let err = rt
        .issuance
        .sign_as(&cell("cell-2"), request(placement()), now)
        .await
        .unwrap_err();
    let Error::PermissionDenied(Denial::PlacedElsewhere {
        cell: asked,
        instance,
        placed_on,
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (asked.as_str(), instance.as_str(), placed_on.as_str()),
        ("cell-2", INSTANCE, "cell-1")
    );
    let why = err.to_string();
    assert!(
        why.contains("cell cell-2") && why.contains(INSTANCE) && why.contains("cell cell-1"),
        "{why}"
    );

    // An instance nobody registered.
    let mut unknown = placement();
    unknown.instance_guid = "2b2b2b2b-0000-4000-8000-000000000005".parse().unwrap();
    let err = rt
        .issuance
        .sign_as(&cell("cell-1"), request(unknown), now)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied(Denial::NotRegistered { .. })),
        "{err:?}"
    );

    // The right cell, claiming another app: certified as registered.
    let mut claimed = placement();
    claimed.app_guid = "b0b0b0b0-0000-4000-8000-00000000000b".parse().unwrap();
    let cert = rt
        .issuance
        .sign_as(&cell("cell-1"), request(claimed), now)
        .await
        .unwrap();
    assert_eq!(cert.spiffe_id, expected_spiffe_id());

    let entries = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let denials: Vec<_> = entries
        .iter()
        .filter(|e| e.record.kind == EntryKind::Denied)
        .collect();
    assert_eq!(denials.len(), 2);
    assert_eq!(denials[0].record.cell_id.as_deref(), Some("cell-2"));
    assert_eq!(denials[0].record.instance_guid.as_deref(), Some(INSTANCE));
    assert!(denials[0]
        .record
        .reason
        .as_deref()
        .unwrap()
        .contains("placed on cell cell-1"));
    assert!(denials
        .iter()
        .all(|d| d.record.serial.is_none() && d.record.cert_der.is_none()));
    let issued: Vec<_> = entries
        .iter()
        .filter(|e| e.record.kind == EntryKind::Issued)
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].record.app_guid.as_deref(), Some(APP));
    rt.shutdown().await;
}
