//! Several servers on one real PostgreSQL: what one server changes (placements, policies,
//! modes) reaches the others through the change feed, also across a broken connection.

// Tests wait on real databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use idmint::api::{Caller, SignRequest};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::placement::{Placement, PlacementUpdate};
use idmint::policy::{Mode, Policy, PortRange, Protocol, Scope};

/// Two runtimes on one fresh database, sharing the operator's key-encryption key.
async fn two_servers(tag: &str) -> (String, Runtime, Runtime, [tempfile::TempDir; 2]) {
    let url = fresh_pg_database(tag).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let kek = dirs[0].path().join("shared-kek");
    std::fs::write(&kek, "5e".repeat(32)).unwrap();
    let kek = kek.display().to_string();
    let start = |dir: &std::path::Path, init| {
        let config = config_in(dir, &[("store.url", url.as_str()), ("ca.kek_file", &kek)]);
        async move {
            Runtime::start(config, init)
                .await
                .expect("runtime on PostgreSQL")
        }
    };
    let a = start(dirs[0].path(), Init::CreateIfMissing).await;
    let b = start(dirs[1].path(), Init::MustExist).await;
    (url, a, b, dirs)
}

/// Waits until `ok` holds; returns how long it took.
async fn within(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn placed(n: u8) -> Placement {
    let mut p = placement();
    p.instance_guid = format!("1a1a1a1a-0000-4000-8000-0000000001{n:02x}")
        .parse()
        .unwrap();
    p
}

fn policy(source: &str) -> Policy {
    Policy {
        source: source.parse().unwrap(),
        destination: APP.parse().unwrap(),
        protocol: Protocol::Tcp,
        ports: PortRange::new(8080, 8080).unwrap(),
    }
}

const OTHER_APP: &str = "c0c0c0c0-0000-4000-8000-00000000000c";

#[tokio::test]
async fn placements_policies_and_modes_made_on_one_server_reach_the_other() {
    let (url, a, b, _dirs) = two_servers("feed").await;
    let mut cell_on_b = b.registry.watch(Some("cell-1".parse().unwrap()));
    assert_eq!(cell_on_b.next().await, PlacementUpdate::Snapshot(vec![]));

    // Registered through A: B knows it, and B's follower of cell-1 hears of it.
    assert!(a.registry.register(placed(1)).await.unwrap());
    let took = within("B knows A's placement", Duration::from_secs(3), || {
        b.registry.get(&placed(1).instance_guid).is_some()
    })
    .await;
    println!("a placement reached the other server in {took:?}");
    let heard = tokio::time::timeout(Duration::from_secs(3), cell_on_b.next())
        .await
        .expect("the cell's follower on B hears of it");
    assert_eq!(heard, PlacementUpdate::Registered(placed(1)));

    // The same placement again through B changes nothing; a different one is a conflict.
    assert!(!b.registry.register(placed(1)).await.unwrap());
    let mut moved = placed(1);
    moved.cell_id = "cell-2".parse().unwrap();
    let err = b.registry.register(moved).await.unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    // Deregistered through B: gone on A.
    b.registry
        .deregister(&placed(1).instance_guid)
        .await
        .unwrap();
    within("A forgets it", Duration::from_secs(3), || {
        a.registry.get(&placed(1).instance_guid).is_none()
    })
    .await;

    // A policy added on A, and a mode set on B, reach the other.
    let added: BTreeSet<Policy> = [policy(OTHER_APP)].into();
    a.policies.add(&added, "tester").await.unwrap();
    within("B has A's policy", Duration::from_secs(3), || {
        b.policies.list(None) == added.iter().cloned().collect::<Vec<_>>()
    })
    .await;
    let app_scope = Scope::App(APP.parse().unwrap());
    b.policies
        .set_mode(app_scope.clone(), Some(Mode::Policy), "tester")
        .await
        .unwrap();
    within("A has B's mode", Duration::from_secs(3), || {
        a.policies
            .modes()
            .iter()
            .any(|(s, m)| *s == app_scope && m == Mode::Policy)
    })
    .await;
    a.policies.remove(&added, "tester").await.unwrap();
    within("B drops the policy", Duration::from_secs(3), || {
        b.policies.list(None).is_empty()
    })
    .await;

    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn a_cell_is_served_by_a_server_that_has_not_heard_of_its_instance_yet() {
    let (url, a, b, _dirs) = two_servers("find").await;
    // Registered through A and asked of B at once: B reads the store rather than refuse.
    a.registry.register(placed(2)).await.unwrap();
    let (_key, csr) = idmint::agent::new_key_and_csr().unwrap();
    let signed = b
        .issuance
        .sign_as(
            &Caller::Cell("cell-1".parse().unwrap()),
            SignRequest {
                placement: placed(2),
                csr,
                ttl: None,
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .expect("B certifies an instance registered through A");
    assert_eq!(signed.spiffe_id, expected_spiffe_id());
    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(&url).await;
}

#[tokio::test]
async fn changes_made_while_a_server_was_cut_off_from_postgresql_reach_it_afterwards() {
    let (url, a, b, _dirs) = two_servers("cut").await;
    a.registry.register(placed(3)).await.unwrap();
    within("B knows it", Duration::from_secs(3), || {
        b.registry.get(&placed(3).instance_guid).is_some()
    })
    .await;

    // Every connection to the database is cut, B's listener among them; A then changes things.
    let cut = terminate_backends(&url).await;
    assert!(cut >= 2, "only {cut} connections were cut");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A's pool notices the broken connections as it uses them.
        match a.registry.register(placed(4)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "A never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.registry
        .deregister(&placed(3).instance_guid)
        .await
        .unwrap();
    let took = within("B takes up both", Duration::from_secs(10), || {
        b.registry.get(&placed(4).instance_guid).is_some()
            && b.registry.get(&placed(3).instance_guid).is_none()
    })
    .await;
    println!("changes reached the cut-off server {took:?} after they were made");
    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(&url).await;
}

/// Terminates every other connection to `url`'s database; returns how many.
async fn terminate_backends(url: &str) -> i64 {
    use sqlx::{Connection, Row};
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get("n")
}
