//! `idmint audit …`: read the issuance ledger.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::table;
use crate::ca::cert_pem;
use crate::clock::Clock;
use crate::config::Config;
use crate::ids::{Guid, Ttl};
use crate::ledger::note::{Checkpoint, NoteVerifier};
use crate::ledger::tree::TiledTree;
use crate::ledger::{checkpoints, prove, verify, AuditLog};
use crate::store::{LedgerEntry, LedgerFilter, Store};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List ledger entries, oldest first.
    List {
        /// Only this app's entries.
        #[arg(long)]
        app_guid: Option<Guid>,
        /// Only the issuance with this serial (hex).
        #[arg(long)]
        serial: Option<String>,
        /// Only entries since a time: RFC 3339 (2026-11-26T10:00:00Z) or an age (e.g. 2h).
        #[arg(long, value_parser = parse_since)]
        since: Option<OffsetDateTime>,
        /// Only entries before a time: RFC 3339 or an age (e.g. 1h: until an hour ago).
        #[arg(long, value_parser = parse_since)]
        until: Option<OffsetDateTime>,
        /// Only this cell's entries.
        #[arg(long)]
        cell: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one issuance, with its certificate.
    Show {
        /// The certificate serial (hex).
        serial: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The certificates of an app that are valid now (or at --at): issued, not expired, not revoked.
    Valid {
        /// The app.
        #[arg(long)]
        app_guid: Guid,
        /// Another time than now: RFC 3339 or an age (e.g. 2h: two hours ago).
        #[arg(long, value_parser = parse_since)]
        at: Option<OffsetDateTime>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every ledger entry as JSON Lines for a SIEM, oldest first: each with its leaf index,
    /// its leaf hash and its certificate (base64 DER).
    Export {
        /// Only entries from this leaf index on (to follow the ledger: the last index + 1).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Print the log's latest signed checkpoint (a C2SP checkpoint in a signed note) and the
    /// key it is checked with.
    Checkpoint {
        /// Also write the note to this file, to keep outside idmint's reach.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Print, as JSON, the inclusion proof of one issuance in a checkpoint: anyone with the
    /// log's key can check it offline (`idmint audit check-proof`, or any RFC 9162 verifier).
    Prove {
        /// The certificate serial (hex).
        serial: String,
        /// A saved checkpoint to prove against; by default the latest.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Check a proof made by `idmint audit prove`, offline, with the log's key.
    CheckProof {
        /// The proof's JSON file.
        proof: PathBuf,
        /// The log's key (`name+id+key`, as `idmint audit checkpoint` prints it).
        #[arg(long)]
        key: String,
    },
    /// Recompute the ledger from its stored records and check it against the leaf hashes,
    /// the tiles and every checkpoint the log signed, and the saved ones given. Exits
    /// non-zero, naming the first entry that differs, when anything does.
    Verify {
        /// A saved checkpoint to hold the ledger against (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
    },
}

fn parse_since(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let age: Ttl = s
        .parse()
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age like 2h"))?;
    Ok(Clock::system().now() - age.duration())
}

pub async fn run(cmd: AuditCommand, config: Config) -> Result<()> {
    let store = Store::open(&config.store, false).await?;
    let audit = AuditLog::new(store.clone());
    let result = match cmd {
        AuditCommand::List {
            app_guid,
            serial,
            since,
            until,
            cell,
            limit,
            json,
        } => {
            if limit < 1 {
                bail!("--limit must be at least 1");
            }
            let filter = LedgerFilter {
                app_guid: app_guid.map(|g| g.to_string()),
                serial: serial.map(|s| s.to_ascii_lowercase()),
                since_ms: since.map(crate::clock::unix_ms),
                until_ms: until.map(crate::clock::unix_ms),
                cell_id: cell,
                limit: Some(limit),
                ..LedgerFilter::default()
            };
            audit
                .list(&filter)
                .await
                .map_err(Into::into)
                .and_then(|entries| list(&entries, json))
        }
        AuditCommand::Show { serial, json } => match audit.by_serial(&serial).await? {
            Some(entry) => show(&entry, json),
            None => Err(anyhow!("no certificate with serial {serial} in the ledger")),
        },
        AuditCommand::Valid { app_guid, at, json } => {
            let at = at.unwrap_or_else(|| Clock::system().now());
            let filter = LedgerFilter {
                app_guid: Some(app_guid.to_string()),
                valid_at: Some(at.unix_timestamp()),
                ..LedgerFilter::default()
            };
            let entries = audit.list(&filter).await?;
            list(&entries, json)
        }
        AuditCommand::Export { from } => export(&store, from).await,
        AuditCommand::Checkpoint { save } => checkpoint(&audit, save).await,
        AuditCommand::Prove { serial, checkpoint } => {
            prove(&store, &audit, &config, &serial, checkpoint).await
        }
        AuditCommand::CheckProof { proof, key } => check_proof(&proof, &key),
        AuditCommand::Verify { checkpoints } => verify(&audit, &config, &checkpoints).await,
    };
    store.close().await;
    result
}

fn list(entries: &[LedgerEntry], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let r = &e.record;
            let dash = || "-".to_string();
            vec![
                e.seq.to_string(),
                r.kind.as_str().to_string(),
                table::time_text(r.recorded_at_ms / 1000),
                r.serial.clone().unwrap_or_else(dash),
                r.instance_guid.clone().unwrap_or_else(dash),
                r.cell_id.clone().unwrap_or_else(dash),
                r.spiffe_id
                    .clone()
                    .or_else(|| r.reason.clone())
                    .unwrap_or_else(dash),
            ]
        })
        .collect();
    table::print(
        &[
            "SEQ",
            "KIND",
            "RECORDED",
            "SERIAL",
            "INSTANCE",
            "CELL",
            "SPIFFE ID / REASON",
        ],
        &rows,
    );
    Ok(())
}

fn show(e: &LedgerEntry, json: bool) -> Result<()> {
    let r = &e.record;
    let pem = r.cert_der.as_deref().map(cert_pem);
    if json {
        let mut v = serde_json::to_value(e)?;
        v["certificate_pem"] = serde_json::json!(pem);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let time = |v: Option<i64>| v.map(table::time_text).unwrap_or_else(|| "-".into());
    println!("ledger entry        {}", e.seq);
    println!("kind                {}", r.kind.as_str());
    println!(
        "recorded            {}",
        table::time_text(r.recorded_at_ms / 1000)
    );
    println!("serial              {}", opt(&r.serial));
    println!("SPIFFE ID           {}", opt(&r.spiffe_id));
    println!("instance            {}", opt(&r.instance_guid));
    println!(
        "app / space / org   {} / {} / {}",
        opt(&r.app_guid),
        opt(&r.space_guid),
        opt(&r.org_guid)
    );
    println!("cell                {}", opt(&r.cell_id));
    println!("container IP        {}", opt(&r.container_ip));
    println!(
        "valid               {} .. {}",
        time(r.not_before),
        time(r.not_after)
    );
    println!("public key SHA-256  {}", opt(&r.public_key_sha256));
    println!("issuer SHA-256      {}", opt(&r.issuer_fingerprint));
    println!(
        "leaf hash           {}",
        crate::ca::encode_hex(&r.leaf_hash)
    );
    if let Some(pem) = pem {
        print!("{pem}");
    }
    Ok(())
}

async fn checkpoint(audit: &AuditLog, save: Option<PathBuf>) -> Result<()> {
    let note = audit.checkpoint().await?.ok_or_else(|| {
        anyhow!("the log has no signed checkpoint yet; a running server signs one within seconds")
    })?;
    if let Some(path) = save {
        std::fs::write(&path, &note).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("saved to {}", path.display());
    }
    print!("{note}");
    for key in audit.verifier_keys().await? {
        eprintln!("checked with the key {key}");
    }
    Ok(())
}

/// The log's keys, and its origin under this configuration.
async fn log_keys(audit: &AuditLog, config: &Config) -> Result<(Vec<NoteVerifier>, String)> {
    let keys = audit
        .verifier_keys()
        .await?
        .iter()
        .map(|k| NoteVerifier::parse(k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((keys, checkpoints::origin(&config.ca.trust_domain)))
}

/// A saved checkpoint file, opened with the log's keys.
fn read_checkpoint(
    path: &Path,
    keys: &[NoteVerifier],
    origin: &str,
) -> Result<(Checkpoint, String)> {
    let note = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read checkpoint file {}", path.display()))?;
    let checkpoint = verify::open_checkpoint(&note, keys, origin)
        .map_err(|why| anyhow!("checkpoint file {}: {why}", path.display()))?;
    Ok((checkpoint, note))
}

async fn prove(
    store: &Store,
    audit: &AuditLog,
    config: &Config,
    serial: &str,
    file: Option<PathBuf>,
) -> Result<()> {
    let entry = audit
        .by_serial(serial)
        .await?
        .ok_or_else(|| anyhow!("no certificate with serial {serial} in the ledger"))?;
    let (keys, origin) = log_keys(audit, config).await?;
    let (checkpoint, note) = match file {
        Some(path) => read_checkpoint(&path, &keys, &origin)?,
        None => {
            let note = audit
                .checkpoint()
                .await?
                .ok_or_else(|| anyhow!("the log has no signed checkpoint yet"))?;
            let checkpoint = verify::open_checkpoint(&note, &keys, &origin)
                .map_err(|why| anyhow!("the log's latest checkpoint: {why}"))?;
            (checkpoint, note)
        }
    };
    let mut tree = TiledTree::load(store.clone()).await?;
    tree.catch_up().await?;
    let proof = prove::prove(&tree, &entry, &checkpoint, &note).await?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(())
}

fn check_proof(path: &Path, key: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read proof file {}", path.display()))?;
    let proof: prove::InclusionProof = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof from idmint audit prove", path.display()))?;
    let key = NoteVerifier::parse(key)?;
    let entry = prove::check(&proof, &key)?;
    let record = crate::ledger::decode(&entry)
        .map_err(|e| anyhow!("the proof holds, but its entry is not a ledger record: {e}"))?;
    println!(
        "proof holds: entry {} ({} {}) is in the log of {} entries signed by {}",
        proof.index,
        record.kind.as_str(),
        record.serial.as_deref().unwrap_or("-"),
        proof.tree_size,
        key.name()
    );
    Ok(())
}

async fn verify(audit: &AuditLog, config: &Config, files: &[PathBuf]) -> Result<()> {
    let (keys, origin) = log_keys(audit, config).await?;
    let mut given = Vec::new();
    for path in files {
        let (checkpoint, _) = read_checkpoint(path, &keys, &origin)?;
        given.push(verify::GivenCheckpoint {
            checkpoint,
            source: path.display().to_string(),
        });
    }
    let report = verify::verify(audit.store(), &given).await?;
    if report.findings.is_empty() {
        println!(
            "ledger verified: {} entries, root {}, consistent with {} checkpoints",
            report.entries,
            crate::ca::encode_hex(&report.root),
            report.checkpoints
        );
        return Ok(());
    }
    for finding in &report.findings {
        println!("{finding}");
    }
    match report.first_entry() {
        Some(seq) => bail!(
            "the ledger does not verify: {} findings, the first at entry {seq}",
            report.findings.len()
        ),
        None => bail!(
            "the ledger does not verify: {} findings",
            report.findings.len()
        ),
    }
}

/// One entry of `audit export`.
#[derive(serde::Serialize)]
struct ExportLine<'e> {
    /// The entry's leaf index (its seq).
    index: i64,
    /// Its RFC 6962 leaf hash, hex.
    leaf_hash: String,
    #[serde(flatten)]
    record: &'e crate::store::LedgerRecord,
    /// The certificate, base64 DER.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
}

async fn export(store: &Store, from: u64) -> Result<()> {
    use base64::Engine as _;
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut next = from;
    loop {
        let batch = store.ledger_range(next, next.saturating_add(4096)).await?;
        for entry in &batch {
            let line = ExportLine {
                index: entry.seq,
                leaf_hash: crate::ca::encode_hex(&entry.record.leaf_hash),
                record: &entry.record,
                certificate: entry
                    .record
                    .cert_der
                    .as_ref()
                    .map(|der| base64::engine::general_purpose::STANDARD.encode(der)),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        if batch.len() < 4096 {
            break;
        }
        next += batch.len() as u64;
    }
    out.flush()?;
    Ok(())
}
