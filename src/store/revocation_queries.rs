//! Revoked certificates and the apps and cells refused every certificate.

use sqlx::Row;

use super::{Error, Store, Topic};

/// A revoked certificate, listed in its issuer's CRL until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedCert {
    /// Its serial, lowercase hex as the ledger has it.
    pub serial: String,
    /// SHA-256 (hex) of the intermediate that issued it.
    pub issuer_fingerprint: String,
    /// Its expiry (Unix seconds); it leaves the CRLs then.
    pub not_after: i64,
    /// When it was revoked (Unix milliseconds).
    pub revoked_at_ms: i64,
    /// The RFC 5280 reason, by name.
    pub reason: String,
    /// Who asked.
    pub requested_by: String,
}

/// An app or a cell refused every certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedSubject {
    /// `app` or `cell`.
    pub kind: String,
    /// The app GUID or the cell ID.
    pub subject: String,
    /// When (Unix milliseconds), why and at whose request.
    pub revoked_at_ms: i64,
    pub reason: String,
    pub requested_by: String,
}

impl Store {
    /// Records revocations in one transaction, announced on the change feed; what is revoked
    /// already stays as it was. Returns how many certificates and subjects were new.
    pub async fn revoke(
        &self,
        certs: &[RevokedCert],
        subject: Option<&RevokedSubject>,
    ) -> Result<(u64, bool), Error> {
        let mut tx = self.begin_change().await?;
        let mut new_certs = 0;
        for c in certs {
            new_certs += sqlx::query(
                "INSERT INTO revoked_certs \
                 (serial, issuer_fingerprint, not_after, revoked_at_ms, reason, requested_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (serial) DO NOTHING",
            )
            .bind(&c.serial)
            .bind(&c.issuer_fingerprint)
            .bind(c.not_after)
            .bind(c.revoked_at_ms)
            .bind(&c.reason)
            .bind(&c.requested_by)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        let mut new_subject = false;
        if let Some(s) = subject {
            new_subject = sqlx::query(
                "INSERT INTO revoked_subjects \
                 (kind, subject, revoked_at_ms, reason, requested_by) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, subject) DO NOTHING",
            )
            .bind(&s.kind)
            .bind(&s.subject)
            .bind(s.revoked_at_ms)
            .bind(&s.reason)
            .bind(&s.requested_by)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
        }
        let at_ms = certs
            .iter()
            .map(|c| c.revoked_at_ms)
            .chain(subject.map(|s| s.revoked_at_ms))
            .max()
            .unwrap_or_default();
        if new_certs > 0 || new_subject {
            self.record_change(&mut tx, Topic::Revocation, "", at_ms)
                .await?;
        }
        tx.commit().await?;
        Ok((new_certs, new_subject))
    }

    /// The revoked certificates that have not expired at `now` (Unix seconds).
    pub async fn revoked_certs(&self, now: i64) -> Result<Vec<RevokedCert>, Error> {
        let rows = sqlx::query(
            "SELECT serial, issuer_fingerprint, not_after, revoked_at_ms, reason, requested_by \
             FROM revoked_certs WHERE not_after > $1 ORDER BY serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedCert {
                    serial: r.try_get("serial")?,
                    issuer_fingerprint: r.try_get("issuer_fingerprint")?,
                    not_after: r.try_get("not_after")?,
                    revoked_at_ms: r.try_get("revoked_at_ms")?,
                    reason: r.try_get("reason")?,
                    requested_by: r.try_get("requested_by")?,
                })
            })
            .collect()
    }

    /// Every revoked app and cell.
    pub async fn revoked_subjects(&self) -> Result<Vec<RevokedSubject>, Error> {
        let rows = sqlx::query(
            "SELECT kind, subject, revoked_at_ms, reason, requested_by \
             FROM revoked_subjects ORDER BY kind, subject",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedSubject {
                    kind: r.try_get("kind")?,
                    subject: r.try_get("subject")?,
                    revoked_at_ms: r.try_get("revoked_at_ms")?,
                    reason: r.try_get("reason")?,
                    requested_by: r.try_get("requested_by")?,
                })
            })
            .collect()
    }
}
