//! The canonical encoding of a ledger record and its Merkle leaf hash.

use ring::digest;

use crate::store::LedgerRecord;

/// Version tag at the start of every encoded record; a new layout gets a new tag.
const FORMAT: &[u8] = b"idmint-ledger-record-v1";

/// SHA-256(0x00 || canonical record), the RFC 6962 leaf hash. The encoding is each field in a
/// fixed order as a 4-byte big-endian length and its bytes (length 0xFFFFFFFF for absent), so
/// no two different records encode alike.
pub fn leaf_hash(r: &LedgerRecord) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x00]);
    let mut field = |bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            ctx.update(&(b.len() as u32).to_be_bytes());
            ctx.update(b);
        }
        None => ctx.update(&u32::MAX.to_be_bytes()),
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
    ctx.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EntryKind;

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
}
