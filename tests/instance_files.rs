//! Diego's instance identity files: the agent writes `instance.crt` (leaf, then chain) and
//! `instance.key` (0600) for each instance, replaces them on every renewal, and removes them
//! on deregistration. A plain TLS server and client (openssl) using only those files and the
//! trust bundle complete a mutually authenticated handshake.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use idmint::agent::{Bundle, Settings, Workloads};
use idmint::app::Runtime;
use idmint::ca::Init;
use idmint::sds::SdsMetrics;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs an openssl TLS server on the files in `files` and connects an openssl client that uses
/// the same files; both verify the other against `bundle`. Returns the client's output.
fn handshake(files: &Path, bundle: &Path) -> String {
    let (crt, key) = (files.join("instance.crt"), files.join("instance.key"));
    let port = free_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-naccept",
            "1",
        ])
        .arg("-cert")
        .arg(&crt)
        .arg("-cert_chain")
        .arg(&crt)
        .arg("-key")
        .arg(&key)
        .arg("-CAfile")
        .arg(bundle)
        .args(["-Verify", "1", "-verify_return_error", "-quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-brief",
            ])
            .arg("-CAfile")
            .arg(bundle)
            .args(["-verify_return_error"])
            .arg("-cert")
            .arg(&crt)
            .arg("-cert_chain")
            .arg(&crt)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            break text;
        }
        assert!(Instant::now() < deadline, "handshake failed: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    text
}

/// [`handshake`] off the async runtime, which must keep serving renewals meanwhile.
async fn assert_handshake(files: &Path, bundle: &Path) {
    let (files, bundle) = (files.to_path_buf(), bundle.to_path_buf());
    let out = tokio::task::spawn_blocking(move || handshake(&files, &bundle))
        .await
        .unwrap();
    assert!(out.contains("Verification: OK"), "{out}");
}

#[tokio::test]
async fn instance_files_work_for_plain_tls_are_renewed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(
        config_in(dir.path(), &[("ca.leaf_ttl", "4s")]),
        Init::CreateIfMissing,
    )
    .await
    .unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, rt.ca.roots_pem()).unwrap();
    let (_bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle {
        trust_domain: rt.config.ca.trust_domain.clone(),
        roots_pem: rt.ca.roots_pem(),
        generation: 1,
        crls_pem: String::new(),
        jwt_keys_json: String::new(),
        federated: Vec::new(),
    }));
    let instances = dir.path().join("instances");
    let agent = Workloads::new(
        Arc::new(rt.issuance.clone()),
        Settings {
            instance_dir: Some(instances.clone()),
            cell: None,
            ..rt.config.agent_settings()
        },
        bundle_rx,
        Arc::new(SdsMetrics::default()),
        CancellationToken::new(),
    );
    agent.add(placement()).await.unwrap();
    let files = instances.join(INSTANCE);
    let (crt, key) = (files.join("instance.crt"), files.join("instance.key"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crt.exists() {
        assert!(Instant::now() < deadline, "no instance files");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = std::fs::read_to_string(&crt).unwrap();
    assert_eq!(
        first.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and intermediate"
    );
    assert_handshake(&files, &bundle).await;

    // Renewal replaces both files, and the new pair works the same way.
    let deadline = Instant::now() + Duration::from_secs(6);
    while std::fs::read_to_string(&crt).unwrap() == first {
        assert!(Instant::now() < deadline, "files never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_handshake(&files, &bundle).await;

    agent.remove(&placement().instance_guid).await;
    assert!(!files.exists(), "files removed with the instance");
    rt.shutdown().await;
}
