//! The server's side of c2c policy, in process: policies and modes survive a restart on SQLite
//! and on PostgreSQL, and each cell hears exactly the allow lists of the apps placed on it, when
//! they change, and nothing else.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::ids::Guid;
use idmint::placement::Placement;
use idmint::policy::{AllowList, AllowUpdate, Mode, Policy, PortRange, Protocol, Scope};
use idmint::server::allow_watch::AllowWatch;

const ORG: &str = "0e0e0e0e-0000-4000-8000-0000000000aa";
const SPACE: &str = "5a5a5a5a-0000-4000-8000-0000000000bb";

fn g(n: u8) -> Guid {
    format!("a{n}a{n}a{n}a{n}-0000-4000-8000-00000000000{n}")
        .parse()
        .unwrap()
}

fn id(n: u8) -> String {
    format!("spiffe://cf.internal/org/{ORG}/space/{SPACE}/app/{}", g(n))
}

fn policy(source: u8, destination: u8, port: i64) -> Policy {
    Policy {
        source: g(source).into(),
        destination: g(destination),
        protocol: Protocol::Tcp,
        ports: PortRange::new(port, port).unwrap(),
    }
}

fn set(ps: &[Policy]) -> BTreeSet<Policy> {
    ps.iter().cloned().collect()
}

/// Instance `i` of app `app` on `cell`.
fn placed(i: u8, app: u8, cell: &str) -> Placement {
    Placement {
        instance_guid: format!("1{i}1{i}1{i}1{i}-0000-4000-8000-00000000000{i}")
            .parse()
            .unwrap(),
        app_guid: g(app),
        space_guid: Some(SPACE.parse().unwrap()),
        org_guid: Some(ORG.parse().unwrap()),
        cell_id: cell.parse().unwrap(),
        container_ip: None,
    }
}

fn allowing(mode: Mode, ids: &[u8]) -> AllowList {
    AllowList {
        mode,
        sources: ids.iter().map(|n| id(*n)).collect(),
    }
}

async fn next(watch: &mut AllowWatch) -> AllowUpdate {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an update within 5 s")
}

/// Asserts that `watch` has nothing to say for a while.
async fn quiet(watch: &mut AllowWatch, why: &str) {
    if let Ok(u) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("{why}: got {u:?}");
    }
}

async fn policies_and_modes_survive_a_restart(overrides: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), overrides);
    let rt = Runtime::start(config.clone(), Init::CreateIfMissing)
        .await
        .unwrap();
    let added = rt
        .policies
        .add(&set(&[policy(1, 2, 8080), policy(3, 2, 9000)]), "a test")
        .await
        .unwrap();
    assert_eq!(added.len(), 2);
    assert!(
        rt.policies
            .remove(&set(&[policy(3, 2, 9000)]), "a test")
            .await
            .unwrap()
            .len()
            == 1
    );
    assert!(rt
        .policies
        .set_mode(Scope::App(g(2)), Some(Mode::Policy), "a test")
        .await
        .unwrap());
    assert!(rt
        .policies
        .set_mode(
            Scope::Space(SPACE.parse().unwrap()),
            Some(Mode::Policy),
            "a test"
        )
        .await
        .unwrap());
    assert!(rt
        .policies
        .set_mode(Scope::Space(SPACE.parse().unwrap()), None, "a test")
        .await
        .unwrap());
    rt.shutdown().await;

    let rt = Runtime::start(config, Init::MustExist).await.unwrap();
    assert_eq!(rt.policies.list(None), vec![policy(1, 2, 8080)]);
    let modes: Vec<(Scope, Mode)> = rt
        .policies
        .modes()
        .iter()
        .map(|(s, m)| (s.clone(), m))
        .collect();
    assert_eq!(modes, vec![(Scope::App(g(2)), Mode::Policy)]);
    let recorded = rt
        .audit
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.kind == idmint::store::EntryKind::Policy)
        .count();
    assert_eq!(
        recorded, 6,
        "two added, one removed, three mode changes, all recorded"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn policies_and_modes_survive_a_restart_on_sqlite() {
    policies_and_modes_survive_a_restart(&[]).await;
}

#[tokio::test]
async fn policies_and_modes_survive_a_restart_on_postgresql() {
    let url = fresh_pg_database("policies").await;
    policies_and_modes_survive_a_restart(&[("store.url", &url)]).await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn each_cell_hears_only_the_lists_of_its_own_apps() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &[("policy.default_mode", "policy")]);
    let rt = Runtime::start(config, Init::CreateIfMissing).await.unwrap();
    // App 2 on cell-1, app 4 on cell-2; app 1 is placed nowhere yet.
    rt.registry.register(placed(2, 2, "cell-1")).await.unwrap();
    rt.registry.register(placed(4, 4, "cell-2")).await.unwrap();
    let mut cell1 = AllowWatch::new(
        rt.policies.clone(),
        rt.registry.watch(Some("cell-1".parse().unwrap())),
    );
    let mut cell2 = AllowWatch::new(
        rt.policies.clone(),
        rt.registry.watch(Some("cell-2".parse().unwrap())),
    );
    assert_eq!(
        next(&mut cell1).await,
        AllowUpdate::Snapshot(vec![(g(2), allowing(Mode::Policy, &[]))])
    );
    assert_eq!(
        next(&mut cell2).await,
        AllowUpdate::Snapshot(vec![(g(4), allowing(Mode::Policy, &[]))])
    );

    // 1→2: app 1 has never been placed, so its SPIFFE ID (org and space in it) is not known;
    // nothing changes for 2 yet, and cell-2 hears nothing at all.
    rt.policies
        .add(&set(&[policy(1, 2, 8080)]), "a test")
        .await
        .unwrap();
    quiet(&mut cell1, "app 1's ID is not known yet").await;
    // App 1 is placed (on cell-2): app 2's list gains its ID; cell-2 hears of app 1 arriving
    // with its own (empty) list.
    rt.registry.register(placed(1, 1, "cell-2")).await.unwrap();
    assert_eq!(
        next(&mut cell1).await,
        AllowUpdate::Set(g(2), allowing(Mode::Policy, &[1]))
    );
    assert_eq!(
        next(&mut cell2).await,
        AllowUpdate::Set(g(1), allowing(Mode::Policy, &[]))
    );
    quiet(&mut cell2, "nothing about app 2 reaches cell-2").await;

    // A second policy for the same pair (another port) changes no list: nobody hears of it.
    rt.policies
        .add(&set(&[policy(1, 2, 9090)]), "a test")
        .await
        .unwrap();
    quiet(&mut cell1, "the same sources").await;
    rt.policies
        .remove(&set(&[policy(1, 2, 8080)]), "a test")
        .await
        .unwrap();
    quiet(&mut cell1, "9090 still allows app 1").await;

    // A policy for app 3, which has no instance: kept, and applied when app 3 comes to cell-1.
    rt.policies
        .add(&set(&[policy(4, 3, 8080)]), "a test")
        .await
        .unwrap();
    quiet(&mut cell1, "app 3 is not here").await;
    rt.registry.register(placed(4, 4, "cell-2")).await.unwrap();
    rt.registry.register(placed(3, 3, "cell-1")).await.unwrap();
    assert_eq!(
        next(&mut cell1).await,
        AllowUpdate::Set(g(3), allowing(Mode::Policy, &[4]))
    );

    // An app's mode reaches only the cell that has it.
    rt.policies
        .set_mode(Scope::App(g(3)), Some(Mode::TrustDomain), "a test")
        .await
        .unwrap();
    assert_eq!(
        next(&mut cell1).await,
        AllowUpdate::Set(g(3), allowing(Mode::TrustDomain, &[4]))
    );
    quiet(&mut cell2, "app 3 is not on cell-2").await;

    // The last instance of app 3 leaves cell-1.
    rt.registry
        .deregister(&placed(3, 3, "cell-1").instance_guid)
        .await
        .unwrap();
    assert_eq!(next(&mut cell1).await, AllowUpdate::Gone(g(3)));

    // A foundation-wide switch reaches every cell, each for its own apps.
    rt.policies
        .set_mode(Scope::Foundation, Some(Mode::TrustDomain), "a test")
        .await
        .unwrap();
    assert_eq!(
        next(&mut cell1).await,
        AllowUpdate::Set(g(2), allowing(Mode::TrustDomain, &[1]))
    );
    let mut heard = vec![next(&mut cell2).await, next(&mut cell2).await];
    heard.sort_by_key(|u| format!("{u:?}"));
    assert_eq!(
        heard,
        vec![
            AllowUpdate::Set(g(1), allowing(Mode::TrustDomain, &[])),
            AllowUpdate::Set(g(4), allowing(Mode::TrustDomain, &[])),
        ]
    );
    rt.shutdown().await;
}
