//! The self-signed CA's life on disk: created once, reused on restart, keys sealed at rest, and
//! every broken start refused with the file named and nothing overwritten.

// Tests wait on real processes and databases with real deadlines, and own the tasks they start.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use idmint::app::Runtime;
use idmint::ca::Init;

/// The DER prefix every unencrypted PKCS#8 P-256 private key starts with.
const PKCS8_P256_PREFIX: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];

async fn start(dir: &Path, init: Init) -> anyhow::Result<Runtime> {
    Runtime::start(config_in(dir, &[]), init).await
}

fn fingerprints(rt: &Runtime) -> Vec<String> {
    let mut all: Vec<String> = rt
        .ca
        .roots()
        .iter()
        .map(|r| r.fingerprint.clone())
        .collect();
    all.push(rt.ca.intermediate().fingerprint.clone());
    all
}

/// Starts once so the data directory holds a CA, then stops.
async fn initialised(dir: &Path) -> Vec<String> {
    let rt = start(dir, Init::CreateIfMissing)
        .await
        .expect("first start");
    let fps = fingerprints(&rt);
    rt.shutdown().await;
    fps
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn first_start_creates_a_sealed_ca_that_restarts_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let first = initialised(dir.path()).await;
    assert_eq!(first.len(), 2, "one root and one intermediate");

    let kek = dir.path().join("kek");
    let mode = std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the key-encryption key is readable by its owner only"
    );
    let kek_before = std::fs::read(&kek).unwrap();

    let rt = start(dir.path(), Init::MustExist).await.expect("restart");
    assert_eq!(fingerprints(&rt), first, "restart reuses the same CA");
    rt.shutdown().await;
    let rt = start(dir.path(), Init::CreateIfMissing)
        .await
        .expect("restart");
    assert_eq!(
        fingerprints(&rt),
        first,
        "CreateIfMissing does not create twice"
    );
    rt.shutdown().await;
    assert_eq!(std::fs::read(&kek).unwrap(), kek_before, "KEK untouched");

    // Neither the database nor its WAL holds a private key in the clear.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("idmint.db")
        {
            // SQLite removes the -wal and -shm files as its last connection closes, which can
            // finish just after shutdown returns; a file gone holds nothing.
            let bytes = match std::fs::read(&path) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound && !path.ends_with("idmint.db") =>
                {
                    continue
                }
                read => read.unwrap(),
            };
            assert!(
                !contains(&bytes, PKCS8_P256_PREFIX),
                "{} holds a plaintext PKCS#8 key",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn a_missing_kek_with_an_existing_ca_refuses_to_start_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    initialised(dir.path()).await;
    let kek = dir.path().join("kek");
    std::fs::remove_file(&kek).unwrap();

    for init in [Init::MustExist, Init::CreateIfMissing] {
        let err = start(dir.path(), init).await.err().expect("refused");
        let text = format!("{err:#}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(
            text.contains(&kek.display().to_string()),
            "names the file: {text}"
        );
        assert!(!kek.exists(), "a new KEK would orphan the sealed CA keys");
    }
}

#[tokio::test]
async fn a_wrong_kek_refuses_to_start_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let first = initialised(dir.path()).await;
    let kek = dir.path().join("kek");
    let right = std::fs::read(&kek).unwrap();
    let wrong = "ab".repeat(32) + "\n";
    std::fs::write(&kek, &wrong).unwrap();

    let err = start(dir.path(), Init::CreateIfMissing)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("does not decrypt"), "{text}");
    assert!(
        text.contains(&kek.display().to_string()),
        "names the file: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(&kek).unwrap(),
        wrong,
        "KEK not overwritten"
    );

    // Nothing was replaced: with the right key back, the same CA starts.
    std::fs::write(&kek, right).unwrap();
    let rt = start(dir.path(), Init::MustExist).await.expect("right key");
    assert_eq!(fingerprints(&rt), first);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_malformed_kek_refuses_to_start_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    initialised(dir.path()).await;
    let kek = dir.path().join("kek");
    for garbage in [&b"not hex at all"[..], &b""[..], &[0xffu8; 32][..]] {
        std::fs::write(&kek, garbage).unwrap();
        let err = start(dir.path(), Init::MustExist)
            .await
            .err()
            .expect("refused");
        let text = format!("{err:#}");
        assert!(text.contains("64 hexadecimal digits"), "{text}");
        assert!(
            text.contains(&kek.display().to_string()),
            "names the file: {text}"
        );
        assert_eq!(std::fs::read(&kek).unwrap(), garbage, "KEK not overwritten");
    }
}

#[tokio::test]
async fn an_unusable_data_directory_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"keep me").unwrap();

    let err = start(&file, Init::CreateIfMissing)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("data directory"), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let below = file.join("data");
    let err = start(&below, Init::CreateIfMissing)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("cannot be created"), "{err:#}");
}

#[tokio::test]
async fn a_corrupted_database_is_refused_and_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    initialised(dir.path()).await;
    let db = dir.path().join("idmint.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(
        bytes.len() > 8192,
        "a stopped idmint leaves its data in the database file"
    );
    // Overwrite the header and the first pages, as a bad disk or a stray write would.
    for (i, b) in bytes.iter_mut().take(8192).enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&db, &bytes).unwrap();
    for leftover in ["idmint.db-wal", "idmint.db-shm"] {
        std::fs::remove_file(dir.path().join(leftover)).ok();
    }

    for init in [Init::MustExist, Init::CreateIfMissing] {
        let err = start(dir.path(), init).await.err().expect("refused");
        let text = format!("{err:#}");
        assert!(text.contains("corrupt"), "{text}");
        assert!(
            text.contains(&db.display().to_string()),
            "names the file: {text}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "database left untouched"
        );
    }

    // A file that is not a database at all gets the same answer.
    std::fs::write(&db, b"hello, I am a text file\n").unwrap();
    let err = start(dir.path(), Init::MustExist)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
    assert_eq!(std::fs::read(&db).unwrap(), b"hello, I am a text file\n");
}

#[tokio::test]
async fn must_exist_without_a_database_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = start(dir.path(), Init::MustExist)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("no database"), "{text}");
    assert!(text.contains("idmint dev"), "{text}");
    assert!(!dir.path().join("idmint.db").exists(), "nothing created");
    assert!(!dir.path().join("kek").exists(), "nothing created");
}

#[tokio::test]
async fn a_key_encryption_key_every_user_can_read_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    initialised(dir.path()).await;
    let kek = dir.path().join("kek");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start(dir.path(), Init::CreateIfMissing)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains(&kek.display().to_string())
            && text.contains("readable by every user (mode 644)")
            && text.contains("chmod 600"),
        "{text}"
    );
    // Readable by its owner's group too: used.
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o640)).unwrap();
    start(dir.path(), Init::MustExist)
        .await
        .expect("a group-readable key is used")
        .shutdown()
        .await;
}
