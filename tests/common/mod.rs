//! Helpers shared by the integration tests: configs in temporary directories, openssl as an
//! independent verifier, and a throwaway PostgreSQL database.
#![allow(dead_code)]

pub mod api;
pub mod dev;
pub mod envoy;
pub mod laggard;
pub mod policy_server;
pub mod process;
pub mod strict_der;

use std::path::{Path, PathBuf};
use std::process::Command;

use idmint::ca::cert_pem;
use idmint::config::{Config, Sources};
use idmint::placement::Placement;

/// A config whose state lives in `dir`, with extra `key=value` overrides.
pub fn config_in(dir: &Path, overrides: &[(&str, &str)]) -> Config {
    let mut all = vec![("data_dir".to_string(), dir.display().to_string())];
    all.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let sources = Sources {
        file: None,
        overrides: all,
    };
    Config::load_with_env(&sources, Vec::new()).expect("test config is valid")
}

pub const APP: &str = "a0a0a0a0-0000-4000-8000-000000000001";
pub const SPACE: &str = "5a5a5a5a-0000-4000-8000-000000000002";
pub const ORG: &str = "0e0e0e0e-0000-4000-8000-000000000003";
pub const INSTANCE: &str = "1a1a1a1a-0000-4000-8000-000000000004";

/// The placement most tests issue for.
pub fn placement() -> Placement {
    Placement {
        instance_guid: INSTANCE.parse().unwrap(),
        app_guid: APP.parse().unwrap(),
        space_guid: Some(SPACE.parse().unwrap()),
        org_guid: Some(ORG.parse().unwrap()),
        cell_id: "cell-1".parse().unwrap(),
        container_ip: Some("10.255.1.7".parse().unwrap()),
    }
}

/// The arguments of `idmint instance register` for `instance` of `app` (in [`SPACE`] of
/// [`ORG`]) on `cell`.
pub fn register_args<'a>(instance: &'a str, app: &'a str, cell: &'a str) -> [&'a str; 12] {
    [
        "instance",
        "register",
        "--instance-guid",
        instance,
        "--app-guid",
        app,
        "--space-guid",
        SPACE,
        "--org-guid",
        ORG,
        "--cell-id",
        cell,
    ]
}

/// The SPIFFE ID the default template gives [`placement`] in `cf.internal`.
pub fn expected_spiffe_id() -> String {
    format!("spiffe://cf.internal/org/{ORG}/space/{SPACE}/app/{APP}")
}

/// Runs openssl with `args` in `dir`; returns (success, stdout + stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed: it is the independent verifier in these tests");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs openssl and fails the test if it fails.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed: {text}");
    text
}

/// Verifies `leaf` up to `roots` through `intermediates` with `openssl verify`.
pub fn openssl_verify(
    dir: &Path,
    roots: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    leaf: &[u8],
) -> (bool, String) {
    openssl_verify_at(dir, roots, intermediates, leaf, None)
}

/// [`openssl_verify`] at `at` (a Unix time) instead of now: for what was issued on a test's
/// own clock.
pub fn openssl_verify_at(
    dir: &Path,
    roots: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    leaf: &[u8],
    at: Option<i64>,
) -> (bool, String) {
    let write = |name: &str, ders: &[Vec<u8>]| -> PathBuf {
        let path = dir.join(name);
        let pem: String = ders.iter().map(|d| cert_pem(d)).collect();
        std::fs::write(&path, pem).unwrap();
        path
    };
    let roots = write("verify-roots.pem", roots);
    let inter = write("verify-inter.pem", intermediates);
    let leaf = write("verify-leaf.pem", &[leaf.to_vec()]);
    let at = at.map(|t| t.to_string());
    let mut args = vec!["verify"];
    if let Some(at) = &at {
        args.extend(["-attime", at.as_str()]);
    }
    args.extend([
        "-CAfile",
        roots.to_str().unwrap(),
        "-untrusted",
        inter.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    openssl(dir, &args)
}

/// Verifies `leaf` as a TLS client and server certificate with rustls-webpki.
pub fn webpki_verify(
    roots: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    leaf: &[u8],
) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    let algs = webpki::ALL_VERIFICATION_ALGS;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(algs, &anchors, &inter, UnixTime::now(), usage, None, None)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One DER structure for [`python_strict`]: `cert`, `csr`, `key` or `crl`, and for a
/// certificate optionally, for a CRL always, its issuer's certificate, to check the signature.
pub struct PyItem<'a> {
    pub kind: &'static str,
    pub der: &'a [u8],
    pub issuer: Option<&'a [u8]>,
}

impl<'a> PyItem<'a> {
    pub fn cert(der: &'a [u8], issuer: Option<&'a [u8]>) -> Self {
        PyItem {
            kind: "cert",
            der,
            issuer,
        }
    }
    pub fn csr(der: &'a [u8]) -> Self {
        PyItem {
            kind: "csr",
            der,
            issuer: None,
        }
    }
    pub fn key(der: &'a [u8]) -> Self {
        PyItem {
            kind: "key",
            der,
            issuer: None,
        }
    }
    pub fn crl(der: &'a [u8], issuer: &'a [u8]) -> Self {
        PyItem {
            kind: "crl",
            der,
            issuer: Some(issuer),
        }
    }
}

/// Loads each item with Python's `cryptography` (tests/strict_x509.py), a strict DER parser
/// of another language, and returns what it read, one JSON object per item. Fails the test,
/// with cryptography's reason, if it refuses one. `make test` provides the package (in
/// `.tools/python` when the machine's Python lacks it).
pub fn python_strict(dir: &Path, items: &[PyItem<'_>]) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = dir.join(format!("strict-{i}.der"));
        std::fs::write(&path, item.der).unwrap();
        let mut arg = format!("{}={}", item.kind, path.display());
        if let Some(issuer) = item.issuer {
            let issuer_path = dir.join(format!("strict-{i}-issuer.der"));
            std::fs::write(&issuer_path, issuer).unwrap();
            arg += &format!("@{}", issuer_path.display());
        }
        args.push(arg);
    }
    let out = Command::new("python3")
        .arg(root.join("tests/strict_x509.py"))
        .args(&args)
        .env("PYTHONPATH", root.join(".tools/python"))
        .output()
        .expect("python3 must be installed: with cryptography it is the second strict DER reader");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Python's cryptography: {stderr}");
    let values: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("the checker prints JSON lines"))
        .collect();
    assert_eq!(values.len(), items.len(), "one answer per item: {stderr}");
    values
}

/// Makes a CSR with openssl: `keygen` are the args of `openssl genpkey`/`req` key creation,
/// `extra` are extra `openssl req` args (e.g. -addext). Returns the CSR PEM bytes.
pub fn openssl_csr(dir: &Path, name: &str, keygen: &[&str], extra: &[&str]) -> Vec<u8> {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["genpkey"];
    args.extend_from_slice(keygen);
    args.extend_from_slice(&["-out", &key]);
    openssl_ok(dir, &args);
    let mut args = vec![
        "req",
        "-new",
        "-key",
        &key,
        "-subj",
        "/CN=requested-name",
        "-out",
        &csr,
    ];
    args.extend_from_slice(extra);
    openssl_ok(dir, &args);
    std::fs::read(dir.join(csr)).unwrap()
}

/// Writes a key file as an operator provisions it and idmint writes its own: readable by its
/// owner alone.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// CA maintenance for `rt`, with `fleet` standing in for the sidecars' acknowledgements.
pub fn maintenance(
    rt: &idmint::app::Runtime,
    fleet: tokio::sync::watch::Receiver<Option<u64>>,
) -> idmint::ca::maintenance::Maintenance {
    idmint::ca::maintenance::Maintenance::new(
        rt.ca.clone(),
        rt.store().clone(),
        fleet,
        rt.clock.clone(),
    )
    .unwrap()
    .expect("self-signed mode rotates")
}

/// The fingerprints of the CA certificates in `role` and `state` in `idmint ca show --json`
/// output.
pub fn cas_in(shown: &serde_json::Value, role: &str, state: &str) -> Vec<String> {
    shown["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == role && c["state"] == state)
        .map(|c| c["sha256_fingerprint"].as_str().unwrap().to_string())
        .collect()
}

/// The PostgreSQL server the HA tests use: `TEST_POSTGRES_URL` (set by `make test`),
/// else the local server on 127.0.0.1:5432.
pub fn pg_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Creates a fresh database for one test and returns its URL. Fails the test, with the reason,
/// if PostgreSQL is not reachable: these tests are never skipped.
pub async fn fresh_pg_database(tag: &str) -> String {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is required for this test (make test starts it): {e}")
        });
    let mut rnd = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd).unwrap();
    let name = format!("idmint_{tag}_{}", idmint::ca::encode_hex(&rnd));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// Drops a database made by [`fresh_pg_database`].
pub async fn drop_pg_database(url: &str) {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop test database");
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`; (status, body), or None when the connection fails.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, "")
}

/// One HTTP/1.1 request with `body` to 127.0.0.1:`port`; (status, body), or None when the
/// connection fails.
pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    http_exchange(s, method, path, body)
}

/// [`http_request`] over the admin socket at `socket`, as the service's user.
pub fn socket_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    let s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    http_exchange(s, method, path, body)
}

fn http_exchange(
    mut s: impl std::io::Read + std::io::Write,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         {content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Runs `python3 ARGS` with the packages `make test` installs (.tools/python) and `env`; its
/// standard output. Fails the test, with Python's error, if it fails.
pub fn python3(args: &[&str], env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(args)
        .envs(env.iter().copied())
        .env("PYTHONPATH", root.join(".tools/python"))
        .output()
        .expect("python3 must be installed (make test provides its packages)");
    assert!(
        out.status.success(),
        "python3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/workload_client.py`, a stock gRPC client of the Workload API, on `socket`:
/// one JSON value per line it printed.
pub fn workload_client(socket: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workload_client.py");
    python3(&[&[script, socket][..], args].concat(), &[])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The serial (lowercase hex, as the ledger writes it) of the first certificate in `pem`.
pub fn serial_of_pem(pem: &[u8]) -> String {
    let block = pem::parse_many(pem).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    idmint::ca::encode_hex(cert.raw_serial())
}

/// A web-PKI certificate authority of the test's own and a certificate it issued for
/// localhost: what an operator's public CA would give for the `https_web` profile.
pub fn web_certificate(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test web CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("web-ca.pem"),
        dir.join("web.pem"),
        dir.join("web.key"),
    );
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    write_private(&key_file, key.serialize_pem());
    (ca_file, cert_file, key_file)
}
