//! The canonical encoding of a ledger record and its Merkle leaf hash.

use ring::digest;

use crate::store::{EntryKind, LedgerRecord};

/// Version tag at the start of every encoded record; a new layout gets a new tag.
const FORMAT: &[u8] = b"idmint-ledger-record-v1";

/// SHA-256(0x00 || canonical record), the RFC 6962 leaf hash.
pub fn leaf_hash(r: &LedgerRecord) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x00]);
    ctx.update(&canonical(r));
    ctx.finish().as_ref().to_vec()
}

/// The canonical encoding of `r`: each field in a fixed order as a 4-byte big-endian length
/// and its bytes (length 0xFFFFFFFF for absent), after a version tag, so no two different
/// records encode alike and every encoding reads back as exactly one record.
pub fn canonical(r: &LedgerRecord) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&ABSENT.to_be_bytes()),
    };
    let text = |s: &Option<String>| s.as_ref().map(|s| s.as_bytes().to_vec());
    let int = |n: Option<i64>| n.map(|n| n.to_be_bytes().to_vec());
    field(Some(FORMAT));
    field(Some(r.kind.as_str().as_bytes()));
    field(int(Some(r.recorded_at_ms)).as_deref());
    field(text(&r.serial).as_deref());
    field(text(&r.spiffe_id).as_deref());
    field(text(&r.instance_guid).as_deref());
    field(text(&r.app_guid).as_deref());
    field(text(&r.space_guid).as_deref());
    field(text(&r.org_guid).as_deref());
    field(text(&r.cell_id).as_deref());
    field(text(&r.container_ip).as_deref());
    field(int(r.not_before).as_deref());
    field(int(r.not_after).as_deref());
    field(text(&r.public_key_sha256).as_deref());
    field(text(&r.issuer_fingerprint).as_deref());
    field(r.cert_der.as_deref());
    field(text(&r.reason).as_deref());
    out
}

/// The length that marks an absent field.
const ABSENT: u32 = u32::MAX;

/// Why bytes are not a canonical ledger record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end inside a field.
    #[error("truncated in field {0}")]
    Truncated(usize),
    /// The version tag is not ours.
    #[error("not an idmint ledger record (version tag)")]
    Format,
    /// A field that is always present is absent, or holds what it cannot.
    #[error("field {0} is malformed")]
    Field(usize),
    /// Bytes follow the last field.
    #[error("{0} bytes after the record")]
    Trailing(usize),
}

/// Reads a canonical record back; exactly the bytes [`canonical`] writes are accepted.
pub fn decode(mut bytes: &[u8]) -> Result<LedgerRecord, DecodeError> {
    let mut index = 0;
    let mut next = || -> Result<Option<&[u8]>, DecodeError> {
        index += 1;
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or(DecodeError::Truncated(index))?;
        let len = u32::from_be_bytes(*len);
        if len == ABSENT {
            bytes = rest;
            return Ok(None);
        }
        let len = len as usize;
        if rest.len() < len {
            return Err(DecodeError::Truncated(index));
        }
        let (field, rest) = rest.split_at(len);
        bytes = rest;
        Ok(Some(field))
    };
    let mut fields = Vec::with_capacity(17);
    for _ in 0..17 {
        fields.push(next()?);
    }
    if !bytes.is_empty() {
        return Err(DecodeError::Trailing(bytes.len()));
    }
    let text = |i: usize| -> Result<Option<String>, DecodeError> {
        fields[i]
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Field(i + 1)))
            .transpose()
    };
    let int = |i: usize| -> Result<Option<i64>, DecodeError> {
        fields[i]
            .map(|b| {
                <[u8; 8]>::try_from(b)
                    .map(i64::from_be_bytes)
                    .map_err(|_| DecodeError::Field(i + 1))
            })
            .transpose()
    };
    if fields[0] != Some(FORMAT) {
        return Err(DecodeError::Format);
    }
    let kind = text(1)?
        .and_then(|k| EntryKind::parse(&k))
        .ok_or(DecodeError::Field(2))?;
    Ok(LedgerRecord {
        kind,
        recorded_at_ms: int(2)?.ok_or(DecodeError::Field(3))?,
        serial: text(3)?,
        spiffe_id: text(4)?,
        instance_guid: text(5)?,
        app_guid: text(6)?,
        space_guid: text(7)?,
        org_guid: text(8)?,
        cell_id: text(9)?,
        container_ip: text(10)?,
        not_before: int(11)?,
        not_after: int(12)?,
        public_key_sha256: text(13)?,
        issuer_fingerprint: text(14)?,
        cert_der: fields[15].map(<[u8]>::to_vec),
        reason: text(16)?,
        leaf_hash: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LedgerRecord {
        let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1);
        LedgerRecord {
            instance_guid: Some("i".into()),
            app_guid: Some("a".into()),
            cell_id: Some("c".into()),
            reason: Some("r".into()),
            ..LedgerRecord::bare(EntryKind::Denied, at)
        }
    }

    #[test]
    fn any_field_change_changes_the_hash() {
        let base = leaf_hash(&record());
        let mut moved = record();
        // The same bytes in a neighbouring field must not hash alike.
        moved.reason = None;
        moved.container_ip = Some("r".into());
        assert_ne!(leaf_hash(&moved), base);
        let mut later = record();
        later.recorded_at_ms = 2;
        assert_ne!(leaf_hash(&later), base);
        assert_eq!(leaf_hash(&record()), base);
    }

    #[test]
    fn a_record_reads_back_from_its_encoding_and_nothing_else_does() {
        let mut r = record();
        r.cert_der = Some(vec![0, 1, 2]);
        r.not_after = Some(-5);
        let bytes = canonical(&r);
        assert_eq!(decode(&bytes), Ok(r));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated(17))
        );
        assert_eq!(decode(b""), Err(DecodeError::Truncated(1)));
    }
}
