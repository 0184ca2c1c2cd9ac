//! Rows as the store reads and writes them.

use serde::Serialize;

/// What a ledger entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A certificate was issued.
    Issued,
    /// A request was refused.
    Denied,
    /// A CA certificate was created, activated, retired or left the trust bundle.
    Ca,
    /// A container-to-container policy was added or removed, or an enforcement mode switched.
    Policy,
    /// An instance was registered or deregistered.
    Placement,
    /// Certificates, an app or a cell were revoked.
    Revocation,
    /// A JWT-SVID was issued: `serial` holds its `jti`, `issuer_fingerprint` the signing
    /// key's ID, `reason` its audiences and the SHA-256 of the token, as JSON.
    JwtSvid,
}

impl EntryKind {
    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Issued => "issued",
            EntryKind::Denied => "denied",
            EntryKind::Ca => "ca",
            EntryKind::Policy => "policy",
            EntryKind::Placement => "placement",
            EntryKind::Revocation => "revocation",
            EntryKind::JwtSvid => "jwt_svid",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<EntryKind> {
        match s {
            "issued" => Some(EntryKind::Issued),
            "denied" => Some(EntryKind::Denied),
            "ca" => Some(EntryKind::Ca),
            "policy" => Some(EntryKind::Policy),
            "placement" => Some(EntryKind::Placement),
            "revocation" => Some(EntryKind::Revocation),
            "jwt_svid" => Some(EntryKind::JwtSvid),
            _ => None,
        }
    }
}

/// One ledger record, before it has a sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerRecord {
    /// Issued, denied, or a CA event.
    pub kind: EntryKind,
    /// When the server decided, in Unix milliseconds.
    pub recorded_at_ms: i64,
    /// Certificate serial, lowercase hex (issued only); for a JWT-SVID, its `jti`.
    pub serial: Option<String>,
    /// The certificate's SPIFFE ID (issued only).
    pub spiffe_id: Option<String>,
    /// Instance the request was for (not for CA events).
    pub instance_guid: Option<String>,
    /// App of that instance (not for CA events).
    pub app_guid: Option<String>,
    /// Space, when known.
    pub space_guid: Option<String>,
    /// Org, when known.
    pub org_guid: Option<String>,
    /// Cell that asked (not for CA events).
    pub cell_id: Option<String>,
    /// Container IP, when known.
    pub container_ip: Option<String>,
    /// Validity start, Unix seconds (issued, and CA events).
    pub not_before: Option<i64>,
    /// Validity end, Unix seconds (issued, and CA events).
    pub not_after: Option<i64>,
    /// SHA-256 of the certified SubjectPublicKeyInfo, hex (issued only).
    pub public_key_sha256: Option<String>,
    /// SHA-256 fingerprint of the issuing CA certificate, hex (issued); of the CA certificate
    /// concerned (CA events).
    pub issuer_fingerprint: Option<String>,
    /// The certificate, DER (issued; the CA certificate for CA events).
    #[serde(skip)]
    pub cert_der: Option<Vec<u8>>,
    /// Why the request was refused (denied); what happened (CA events).
    pub reason: Option<String>,
    /// RFC 6962 leaf hash of this record's canonical encoding.
    #[serde(skip)]
    pub leaf_hash: Vec<u8>,
}

impl LedgerRecord {
    /// A record of `kind` decided at `now` that says nothing else yet; callers fill in the
    /// rest with struct update syntax.
    pub fn bare(kind: EntryKind, now: time::OffsetDateTime) -> LedgerRecord {
        LedgerRecord {
            kind,
            recorded_at_ms: crate::clock::unix_ms(now),
            serial: None,
            spiffe_id: None,
            instance_guid: None,
            app_guid: None,
            space_guid: None,
            org_guid: None,
            cell_id: None,
            container_ip: None,
            not_before: None,
            not_after: None,
            public_key_sha256: None,
            issuer_fingerprint: None,
            cert_der: None,
            reason: None,
            leaf_hash: Vec::new(),
        }
    }
}

/// A record as stored, with its position in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// Dense sequence number from 0.
    pub seq: i64,
    /// The record.
    #[serde(flatten)]
    pub record: LedgerRecord,
}

/// Which ledger entries to list. Empty filter: all, newest last.
#[derive(Clone, Debug, Default)]
pub struct LedgerFilter {
    /// Only entries for this app.
    pub app_guid: Option<String>,
    /// Only the entry with this serial.
    pub serial: Option<String>,
    /// Only entries recorded at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only entries recorded before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Only entries of this cell.
    pub cell_id: Option<String>,
    /// Only entries of this instance (no index: give its app too where it is known).
    pub instance_guid: Option<String>,
    /// Only certificates valid at this time (Unix seconds): issued, not before it, not after,
    /// and not revoked.
    pub valid_at: Option<i64>,
    /// At most this many (the newest).
    pub limit: Option<i64>,
}

/// A CA certificate row.
#[derive(Clone, Debug)]
pub struct CaRecord {
    /// `root` or `intermediate`.
    pub role: String,
    /// `prepared`, `active` or `retired`.
    pub state: String,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
    /// The certificate.
    pub cert_der: Vec<u8>,
    /// Private key sealed under the KEK, when idmint holds it.
    pub sealed_key: Option<Vec<u8>>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// When the row was written, Unix seconds.
    pub created_at: i64,
    /// When it became active, Unix seconds.
    pub activated_at: Option<i64>,
    /// When it was retired, Unix seconds.
    pub retired_at: Option<i64>,
    /// Roots: when it left the trust bundle, Unix seconds.
    pub pruned_at: Option<i64>,
}
