//! Revocation in the server: revoked cells and credentials are refused over the API, revoked
//! apps get nothing, every server sharing PostgreSQL publishes the same revocations, the CRLs
//! are strict DER that openssl verifies against their intermediate, and bad requests change
//! nothing.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use idmint::agent;
use idmint::api::Error;
use idmint::ca::crl::Reason;
use idmint::ca::Principal;
use idmint::proto;
use idmint::server::revocations::{RevokeError, Target};
use idmint::store::{EntryKind, LedgerFilter};

use common::api::{client_as, connect, credential, on_cell, start, stop};
use common::{config_in, drop_pg_database, fresh_pg_database, APP, INSTANCE};

const OTHER: &str = "2b2b2b2b-0000-4000-8000-000000000005";

async fn place(rt: &idmint::app::Runtime, port: u16, placements: &[idmint::placement::Placement]) {
    let orchestrator = client_as(rt, port, Principal::Orchestrator).await;
    for p in placements {
        orchestrator
            .client()
            .register_placement(proto::placement_to_wire(p))
            .await
            .unwrap();
    }
}

fn denied<T>(r: Result<T, agent::Error>, words: &str) {
    match r.err() {
        Some(agent::Error::Authority(Error::PermissionDenied(why))) => {
            assert!(why.to_string().contains(words), "{why}")
        }
        other => panic!("expected a refusal saying {words:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn revoked_cells_credentials_and_apps_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, port, cancel, served) = start(dir.path(), &[]).await;
    let roots = rt.ca.roots_pem();
    place(
        &rt,
        port,
        &[on_cell(INSTANCE, "cell-1"), on_cell(OTHER, "cell-2")],
    )
    .await;
    let cell1 = client_as(&rt, port, Principal::Cell("cell-1".parse().unwrap())).await;
    let cell2_pem = credential(&rt, Principal::Cell("cell-2".parse().unwrap())).await;
    let cell2 = connect(port, &cell2_pem, &roots).await.unwrap();
    let first = agent::obtain_svid(&cell1, on_cell(INSTANCE, "cell-1"), None)
        .await
        .unwrap();
    agent::obtain_svid(&cell2, on_cell(OTHER, "cell-2"), None)
        .await
        .unwrap();

    // One instance certificate: revoked, recorded with who asked; the cell signs on.
    let by = "spiffe://cf.internal/admin/test";
    let serial = first.cert.serial_hex.clone();
    let done = rt
        .revocations
        .revoke(&Target::Serial(serial.clone()), Reason::KeyCompromise, by)
        .await
        .unwrap();
    assert_eq!(done.revoked, vec![serial.clone()]);
    let record = rt
        .audit
        .list(&LedgerFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.record.kind == EntryKind::Revocation)
        .expect("the revocation is in the ledger");
    let reason = record.record.reason.unwrap();
    assert!(
        reason.contains(&serial) && reason.contains(by) && reason.contains("key-compromise"),
        "{reason}"
    );
    assert_eq!(record.record.instance_guid.as_deref(), Some(INSTANCE));
    assert!(rt.revocations.now().serials.contains(&serial));
    assert!(
        !rt.revocations.now().crls_pem.is_empty(),
        "CRLs go out while anything is revoked"
    );
    // Twice: nothing new, nothing recorded.
    let again = rt
        .revocations
        .revoke(&Target::Serial(serial.clone()), Reason::KeyCompromise, by)
        .await
        .unwrap();
    assert!(
        again.revoked.is_empty() && again.ledger_seq.is_none(),
        "{again:?}"
    );
    let revocations = |rt: &idmint::app::Runtime| {
        let audit = rt.audit.clone();
        async move {
            audit
                .list(&LedgerFilter::default())
                .await
                .unwrap()
                .iter()
                .filter(|e| e.record.kind == EntryKind::Revocation)
                .count()
        }
    };
    assert_eq!(revocations(&rt).await, 1);
    // What is valid now leaves the revoked certificate out.
    let valid = rt
        .audit
        .list(&LedgerFilter {
            app_guid: Some(APP.into()),
            valid_at: Some(time::OffsetDateTime::now_utc().unix_timestamp()),
            ..LedgerFilter::default()
        })
        .await
        .unwrap();
    assert!(valid
        .iter()
        .all(|e| e.record.serial.as_deref() != Some(serial.as_str())));
    agent::obtain_svid(&cell1, on_cell(INSTANCE, "cell-1"), None)
        .await
        .expect("a revoked instance certificate is replaced");

    // Bad input: an unknown serial, an instance never issued to; nothing recorded.
    let unknown = rt
        .revocations
        .revoke(&Target::Serial("40ab".into()), Reason::Superseded, by)
        .await;
    assert!(
        matches!(&unknown, Err(RevokeError::Unknown(m)) if m.contains("40ab")),
        "{unknown:?}"
    );
    let never = rt
        .revocations
        .revoke(
            &Target::Instance("3c3c3c3c-0000-4000-8000-000000000009".parse().unwrap()),
            Reason::Superseded,
            by,
        )
        .await;
    assert!(matches!(never, Err(RevokeError::Unknown(_))), "{never:?}");
    assert_eq!(revocations(&rt).await, 1);

    // A cell credential revoked by serial: it can neither sign nor renew; the other cell can.
    let cell2_serial = common::serial_of_pem(cell2_pem.chain.as_bytes());
    rt.revocations
        .revoke(&Target::Serial(cell2_serial), Reason::KeyCompromise, by)
        .await
        .unwrap();
    denied(
        agent::obtain_svid(&cell2, on_cell(OTHER, "cell-2"), None).await,
        "is revoked",
    );
    let (_, csr) = agent::new_key_and_csr().unwrap();
    let renewal = cell2.renew_credential(csr).await.err();
    assert!(
        matches!(&renewal, Some(Error::PermissionDenied(m)) if m.to_string().contains("revoked")),
        "{renewal:?}"
    );
    agent::obtain_svid(&cell1, on_cell(INSTANCE, "cell-1"), None)
        .await
        .expect("cell-1 is not revoked");

    // A whole cell: its credential (revoked with everything issued on it) is refused, and so
    // is any other credential it is given.
    rt.revocations
        .revoke(
            &Target::Cell("cell-1".parse().unwrap()),
            Reason::CessationOfOperation,
            by,
        )
        .await
        .unwrap();
    denied(
        agent::obtain_svid(&cell1, on_cell(INSTANCE, "cell-1"), None).await,
        "is revoked",
    );
    let fresh = client_as(&rt, port, Principal::Cell("cell-3".parse().unwrap())).await;
    let enrol = rt
        .issuance
        .enroll(
            &Principal::Cell("cell-1".parse().unwrap()),
            "1h".parse().unwrap(),
            time::OffsetDateTime::now_utc(),
        )
        .await;
    assert!(
        matches!(enrol, Err(Error::PermissionDenied(_))),
        "a revoked cell is not enrolled again"
    );

    // A whole app: no certificate for it from any cell, and each refusal is recorded.
    place(
        &rt,
        port,
        &[on_cell("4d4d4d4d-0000-4000-8000-000000000007", "cell-3")],
    )
    .await;
    rt.revocations
        .revoke(
            &Target::App(APP.parse().unwrap()),
            Reason::PrivilegeWithdrawn,
            by,
        )
        .await
        .unwrap();
    denied(
        agent::obtain_svid(
            &fresh,
            on_cell("4d4d4d4d-0000-4000-8000-000000000007", "cell-3"),
            None,
        )
        .await,
        &format!("app {APP} is revoked"),
    );
    let last = rt.audit.list(&LedgerFilter::default()).await.unwrap();
    let last = last.last().unwrap();
    assert_eq!(last.record.kind, EntryKind::Denied);
    assert!(last.record.reason.as_deref().unwrap().contains("revoked"));
    // No JWT-SVID for the revoked app either.
    let jwt = idmint::api::Authority::sign_jwt(
        &fresh,
        idmint::api::JwtRequest {
            placement: on_cell("4d4d4d4d-0000-4000-8000-000000000007", "cell-3"),
            audience: vec!["api".into()],
        },
    )
    .await;
    let err = jwt.expect_err("a JWT-SVID for a revoked app");
    assert!(
        err.to_string().contains(&format!("app {APP} is revoked")),
        "{err}"
    );
    stop(rt, cancel, served).await;
}

#[tokio::test]
async fn the_crls_are_strict_der_signed_by_their_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let rt = idmint::app::Runtime::start(
        config_in(dir.path(), &[]),
        idmint::ca::Init::CreateIfMissing,
    )
    .await
    .unwrap();
    // Nothing revoked: a CRL is published for the intermediate, but none goes to sidecars.
    let quiet = rt.revocations.now();
    assert_eq!(quiet.crls.len(), 1);
    assert!(quiet.crls_pem.is_empty());
    let svid = agent::obtain_svid(&rt.issuance, common::placement(), None)
        .await
        .unwrap();
    rt.revocations
        .revoke(
            &Target::Instance(INSTANCE.parse().unwrap()),
            Reason::Superseded,
            "test",
        )
        .await
        .unwrap();
    let now = rt.revocations.now();
    assert_eq!(now.crls.len(), 1);
    let crl = &now.crls[0];
    let inter = rt.ca.intermediate();
    assert_eq!(crl.issuer_fingerprint, inter.fingerprint);

    // RustCrypto's strict DER decoder reads it back byte for byte.
    use x509_cert::der::{Decode, Encode};
    let parsed = x509_cert::crl::CertificateList::from_der(&crl.der).expect("strict DER");
    assert_eq!(parsed.to_der().unwrap(), crl.der, "canonical DER");
    let listed: Vec<String> = parsed
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|r| idmint::ca::encode_hex(r.serial_number.as_bytes()))
        .collect();
    assert_eq!(listed, vec![svid.cert.serial_hex.clone()]);

    // openssl checks its signature against the intermediate and reads the reason.
    let d = dir.path();
    std::fs::write(d.join("crl.der"), &crl.der).unwrap();
    std::fs::write(d.join("inter.pem"), idmint::ca::cert_pem(&inter.der)).unwrap();
    let out = common::openssl_ok(
        d,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "inter.pem",
            "-noout",
            "-text",
        ],
    );
    assert!(out.contains("Superseded"), "{out}");
    let (ok, out) = common::openssl(
        d,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "inter.pem",
            "-noout",
            "-verify",
        ],
    );
    assert!(ok && out.contains("verify OK"), "{out}");
    // Python's cryptography, strict too, checks the signature with the intermediate's key.
    let read = common::python_strict(d, &[common::PyItem::crl(&crl.der, &inter.der)]);
    assert_eq!(read[0]["signature_verified"], true);
    assert_eq!(
        read[0]["serials"][0],
        svid.cert.serial_hex.trim_start_matches('0')
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn revocations_reach_every_server_sharing_postgresql() {
    let url = fresh_pg_database("revocation_ha").await;
    let dir = tempfile::tempdir().unwrap();
    let config = || config_in(dir.path(), &[("store.url", &url)]);
    let a = idmint::app::Runtime::start(config(), idmint::ca::Init::CreateIfMissing)
        .await
        .unwrap();
    let b = idmint::app::Runtime::start(config(), idmint::ca::Init::CreateIfMissing)
        .await
        .unwrap();
    let svid = agent::obtain_svid(&a.issuance, common::placement(), None)
        .await
        .unwrap();
    a.revocations
        .revoke(
            &Target::App(APP.parse().unwrap()),
            Reason::KeyCompromise,
            "test",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = b.revocations.now();
        if seen.serials.contains(&svid.cert.serial_hex) && seen.apps.contains(APP) {
            assert!(!seen.crls_pem.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server B never took up A's revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = agent::obtain_svid(&b.issuance, common::placement(), None).await;
    denied(refused, "is revoked");
    a.shutdown().await;
    b.shutdown().await;
    drop_pg_database(&url).await;
}

/// Presents `cert` and `key` (PEM files) to the TLS listener on `port` and asks for `/`:
/// the HTTP status, or why there was none. Python's ssl module: a client that is neither
/// Envoy nor ours.
fn present(cert: &std::path::Path, key: &std::path::Path, port: u16) -> String {
    let script = "import socket, ssl, sys\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
        ctx.check_hostname = False\n\
        ctx.verify_mode = ssl.CERT_NONE\n\
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n\
        try:\n\
        \x20   with socket.create_connection(('127.0.0.1', int(sys.argv[3])), timeout=5) as s:\n\
        \x20       with ctx.wrap_socket(s) as t:\n\
        \x20           t.sendall(b'GET / HTTP/1.1\\r\\nHost: p\\r\\nConnection: close\\r\\n\\r\\n')\n\
        \x20           head = t.recv(64)\n\
        \x20           print(head.split(b' ')[1].decode() if head else 'closed')\n\
        except (OSError, ssl.SSLError) as e:\n\
        \x20   print('refused', e)\n";
    let port = port.to_string();
    let args = [
        "-c",
        script,
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        &port,
    ];
    common::python3(&args, &[]).trim().to_string()
}

/// Bad revocation requests, from the CLI and to the API, each get a clear error and change
/// nothing.
fn refuses_bad_revocations(idmint: &common::dev::Idmint) {
    let ledger = || {
        let (code, body) =
            common::socket_request(&idmint.admin_socket(), "GET", "/v1/ledger?limit=10000", "")
                .unwrap();
        assert_eq!(code, 200);
        body
    };
    let before = ledger();
    for (args, says) in [
        (
            &["--serial", "zz:zz", "--reason", "superseded"][..],
            "not a hexadecimal serial",
        ),
        (
            &["--serial", "40ab", "--reason", "because"],
            "not a revocation reason",
        ),
        (
            &["--serial", "40ab", "--reason", "superseded"],
            "no certificate with serial 40ab",
        ),
        (
            &["--app", "not-a-guid", "--reason", "superseded"],
            "app_guid",
        ),
        (
            &[
                "--instance",
                "3c3c3c3c-0000-4000-8000-000000000009",
                "--reason",
                "superseded",
            ],
            "no certificate was ever issued",
        ),
        (
            &[
                "--serial",
                "40ab",
                "--app",
                &common::dev::app(1),
                "--reason",
                "superseded",
            ],
            "cannot be used with",
        ),
        (&["--reason", "superseded"], "required"),
    ] {
        let out = idmint.cli(&[&["revoke"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    for (body, says) in [
        (r#"{"serial": 5, "reason": "superseded"}"#, "invalid type"),
        (r#"{"serial": "40ab"}"#, "reason"),
        (r#"{"reason": "superseded"}"#, "exactly one"),
        (
            r#"{"serial": "40ab", "cell_id": "c", "reason": "superseded"}"#,
            "exactly one",
        ),
        (
            r#"{"serial": "40ab", "reason": "superseded", "note": 1}"#,
            "unknown field",
        ),
    ] {
        let (code, why) =
            common::socket_request(&idmint.admin_socket(), "POST", "/v1/revoke", body).unwrap();
        assert!(code == 400 || code == 422, "{body}: {code} {why}");
        assert!(why.contains(says), "{body}: {why}");
    }
    assert_eq!(ledger(), before, "nothing recorded");
}

/// A provider sidecar like app B's, validating its peers with the `ALL` secret instead of
/// `c2c-validation-context`: its listening port, once it has its secrets.
fn provider_validating_with_all(
    d: &std::path::Path,
    socket: &str,
    backend: u16,
) -> (u16, common::envoy::Running) {
    use common::envoy::*;
    let (admin, listen) = (common::free_port(), common::free_port());
    let yaml = bootstrap_template("provider")
        .replace("{{SDS_SOCKET}}", socket)
        .replace("{{SDS_API}}", "GRPC")
        .replace("{{ADMIN_PORT}}", &admin.to_string())
        .replace("{{LISTEN_PORT}}", &listen.to_string())
        .replace("{{UPSTREAM_PORT}}", &backend.to_string())
        .replace("name: c2c-validation-context", "name: ALL");
    assert!(!yaml.contains("{{"), "unfilled placeholder");
    std::fs::write(d.join("provider-all.yaml"), yaml).unwrap();
    let child = std::process::Command::new(envoy_bin())
        .args(["--disable-hot-restart", "--log-level", "info", "-c"])
        .arg(d.join("provider-all.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("provider-all.log")).unwrap())
        .spawn()
        .unwrap();
    let running = Running(child);
    let sidecar = |name: &str| {
        let Some((200, body)) = common::http_get(admin, &format!("/stats?filter=^{name}$")) else {
            return 0;
        };
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_for(
        "the SPIFFE-validating provider's secrets",
        Duration::from_secs(30),
        || sidecar("sds.default.update_success") >= 1 && sidecar("sds.ALL.update_success") >= 1,
    );
    assert_eq!(sidecar("sds.ALL.update_rejected"), 0);
    (listen, running)
}

fn serial_of(cert: &std::path::Path) -> String {
    common::serial_of_pem(&std::fs::read(cert).unwrap())
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn envoy_refuses_a_revoked_peer_until_its_agent_renews_and_a_revoked_app_for_good() {
    use common::dev::*;
    use common::envoy::*;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let idmint = Idmint::start_with(d, &["policy.default_mode=trust-domain"]);
    let (sock_a, sock_b) = (idmint.register(1), idmint.register(2));
    let backend = start_backend();
    // Each request opens a new connection: each is a handshake the provider judges anew.
    let (provider, consumer) = start_pair(
        d,
        (&sock_a, &spiffe_id(1)),
        (&sock_b, &spiffe_id(2)),
        backend,
        "600s, max_requests_per_connection: 1",
    );
    let through = || matches!(common::http_get(consumer.listen, "/"), Some((200, _)));
    wait_for(
        "requests through the pair",
        Duration::from_secs(20),
        through,
    );
    refuses_bad_revocations(&idmint);

    // The consumer's certificate and key as its agent holds them now.
    let files = idmint.data.join("instances").join(instance(1));
    let (old_cert, old_key) = (d.join("old.crt"), d.join("old.key"));
    std::fs::copy(files.join("instance.crt"), &old_cert).unwrap();
    std::fs::copy(files.join("instance.key"), &old_key).unwrap();
    let old_serial = serial_of(&old_cert);
    assert_eq!(present(&old_cert, &old_key, provider.listen), "200");
    let (all_provider, _running) = provider_validating_with_all(d, &sock_b, backend);
    assert_eq!(present(&old_cert, &old_key, all_provider), "200");

    let out = idmint.cli(&[
        "revoke",
        "--serial",
        &old_serial,
        "--reason",
        "key-compromise",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&old_serial));
    // The provider refuses the revoked certificate at the next handshake...
    wait_for(
        "the provider to refuse the revoked certificate",
        Duration::from_secs(10),
        || present(&old_cert, &old_key, provider.listen).starts_with("refused"),
    );
    // ...while the agent has replaced it, with a new key, and requests go through again.
    wait_for(
        "a new certificate for the consumer",
        Duration::from_secs(10),
        || serial_of(&files.join("instance.crt")) != old_serial,
    );
    assert_ne!(
        std::fs::read(files.join("instance.key")).unwrap(),
        std::fs::read(&old_key).unwrap(),
        "the new certificate has a new key"
    );
    wait_for(
        "requests through the pair after the renewal",
        Duration::from_secs(20),
        through,
    );
    let (new_cert, new_key) = (d.join("new.crt"), d.join("new.key"));
    std::fs::copy(files.join("instance.crt"), &new_cert).unwrap();
    std::fs::copy(files.join("instance.key"), &new_key).unwrap();
    assert_eq!(present(&new_cert, &new_key, provider.listen), "200");
    assert!(present(&old_cert, &old_key, provider.listen).starts_with("refused"));
    // A provider validating with `ALL` refuses it too: Envoy's SPIFFE validator, which `ALL`
    // is while nothing is revoked, ignores CRLs, so `ALL` changed to the standard validator.
    wait_for(
        "the ALL provider to refuse the revoked certificate",
        Duration::from_secs(10),
        || present(&old_cert, &old_key, all_provider).starts_with("refused"),
    );
    assert_eq!(present(&new_cert, &new_key, all_provider), "200");
    // Revoking it again changes nothing.
    let again = idmint.cli(&[
        "revoke",
        "--serial",
        &old_serial,
        "--reason",
        "key-compromise",
    ]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing new"));

    // The whole consumer app: refused at once, and never issued again.
    let issued = |app: &str| {
        let (code, body) = common::socket_request(
            &idmint.admin_socket(),
            "GET",
            &format!("/v1/ledger?app_guid={app}&limit=10000"),
            "",
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let entries: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        entries.iter().filter(|e| e["kind"] == "issued").count()
    };
    let before = issued(&app(1));
    let out = idmint.cli(&[
        "revoke",
        "--app",
        &app(1),
        "--reason",
        "privilege-withdrawn",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the provider to refuse the revoked app",
        Duration::from_secs(10),
        || !through(),
    );
    assert!(present(&new_cert, &new_key, provider.listen).starts_with("refused"));
    // Its agent asks again (its certificate was revoked) and is refused; nothing is issued.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(issued(&app(1)), before, "no certificate for a revoked app");
    assert!(!through());

    // The CRL the provider checks is published, and lists both.
    let (code, list) =
        common::socket_request(&idmint.admin_socket(), "GET", "/v1/crl", "").unwrap();
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let serials = list["revoked_serials"].as_array().unwrap();
    assert!(serials.iter().any(|s| s == &old_serial));
    assert!(serials.iter().any(|s| s == &serial_of(&new_cert)));
    assert!(
        list.get("revoked_apps").is_none(),
        "the open list names no app"
    );
    let pem_path = list["crls"][0]["pem"].as_str().unwrap().to_string();
    let (code, crl_pem) =
        common::socket_request(&idmint.admin_socket(), "GET", &pem_path, "").unwrap();
    assert_eq!(code, 200);
    assert!(crl_pem.starts_with("-----BEGIN X509 CRL-----"), "{crl_pem}");
    // The DER form, fetched over plain HTTP as any relying party would, with no credential.
    let der_path = list["crls"][0]["der"].as_str().unwrap();
    let script = "import sys, urllib.request\n\
        from cryptography import x509\n\
        r = urllib.request.urlopen('http://127.0.0.1:%s%s' % (sys.argv[1], sys.argv[2]))\n\
        crl = x509.load_der_x509_crl(r.read())\n\
        print(r.headers['Content-Type'], ' '.join(format(e.serial_number, 'x') for e in crl))\n";
    let said = common::python3(&["-c", script, &idmint.admin.to_string(), der_path], &[]);
    assert!(said.starts_with("application/pkix-crl "), "{said}");
    assert!(said.contains(&old_serial), "{said}");
}
