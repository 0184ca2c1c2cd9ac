//! Certificate serial numbers.

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::Error;

/// A 16-byte serial: the issuing millisecond (48 bits, big-endian) then 80 random bits, well
/// above the 64 the CA/B rules ask for. The time prefix keeps the ledger's serial index
/// appending at its right edge instead of dirtying a random page per certificate, which
/// was the largest cost of a durable SQLite commit. Bit 126 is set so the DER INTEGER is
/// always positive and 16 bytes long; it does not disturb the order before the year 4000.
pub(super) fn random_serial(now: OffsetDateTime) -> Result<[u8; 16], Error> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial[6..])
        .map_err(|_| Error::Random)?;
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    serial[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// A [`random_serial`] as lowercase hex: a unique ID that sorts by time, so the ledger's
/// serial index stays append-only for what it names (a JWT-SVID's `jti`).
pub fn time_ordered_id(now: OffsetDateTime) -> Result<String, Error> {
    Ok(super::encode_hex(&random_serial(now)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn serials_are_positive_sixteen_bytes_time_ordered_and_random() {
        let earlier = random_serial(datetime!(2026-01-01 0:00 UTC)).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let s = random_serial(datetime!(2026-01-01 0:00:00.001 UTC)).unwrap();
            assert_eq!(s[0] & 0xc0, 0x40);
            assert!(
                s > earlier,
                "a later millisecond sorts after an earlier one"
            );
            assert!(seen.insert(s[6..].to_vec()), "random tail repeated");
        }
    }
}
