//! `idmint audit …`: read the issuance ledger.

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::table;
use crate::ca::cert_pem;
use crate::clock::Clock;
use crate::config::Config;
use crate::ids::{Guid, Ttl};
use crate::ledger::AuditLog;
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
                limit: Some(limit),
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
