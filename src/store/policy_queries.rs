//! The rows of idmint's own policy store and of the enforcement modes.

use sqlx::Row;

use super::{Error, Store};
use crate::policy::{Mode, Policy, PortRange, Scope};

impl Store {
    /// Every policy kept here.
    pub async fn policies(&self) -> Result<Vec<Policy>, Error> {
        let rows = sqlx::query(
            "SELECT source_app, destination_app, protocol, port_start, port_end FROM policies",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                fn bad<E>(_: E) -> Error {
                    Error::BadValue("policies")
                }
                let text = |col: &str| r.try_get::<String, _>(col);
                let port = |col: &str| r.try_get::<i64, _>(col);
                Ok(Policy {
                    source: text("source_app")?.parse().map_err(bad)?,
                    destination: text("destination_app")?.parse().map_err(bad)?,
                    protocol: text("protocol")?.parse().map_err(bad)?,
                    ports: PortRange::new(port("port_start")?, port("port_end")?).map_err(bad)?,
                })
            })
            .collect()
    }

    /// Adds `p`. Returns false, changing nothing, when it is kept already.
    pub async fn insert_policy(&self, p: &Policy, now_ms: i64) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO policies (source_app, destination_app, protocol, port_start, port_end, \
             added_at_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(p.source.as_str())
        .bind(p.destination.as_str())
        .bind(p.protocol.to_string())
        .bind(i64::from(p.ports.start()))
        .bind(i64::from(p.ports.end()))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes `p`. Returns whether it was kept.
    pub async fn delete_policy(&self, p: &Policy) -> Result<bool, Error> {
        let done = sqlx::query(
            "DELETE FROM policies WHERE source_app = $1 AND destination_app = $2 \
             AND protocol = $3 AND port_start = $4 AND port_end = $5",
        )
        .bind(p.source.as_str())
        .bind(p.destination.as_str())
        .bind(p.protocol.to_string())
        .bind(i64::from(p.ports.start()))
        .bind(i64::from(p.ports.end()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every enforcement mode an operator set.
    pub async fn enforcement_modes(&self) -> Result<Vec<(Scope, Mode)>, Error> {
        let rows = sqlx::query("SELECT scope, scope_id, mode FROM enforcement_modes")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let bad = |_: String| Error::BadValue("enforcement_modes");
                let text = |col: &str| r.try_get::<String, _>(col);
                let scope = Scope::parse(&text("scope")?, &text("scope_id")?).map_err(bad)?;
                Ok((scope, text("mode")?.parse().map_err(bad)?))
            })
            .collect()
    }

    /// Sets the mode of `scope` (`Some`), or clears it (`None`).
    pub async fn set_enforcement_mode(
        &self,
        scope: &Scope,
        mode: Option<Mode>,
        now_ms: i64,
    ) -> Result<(), Error> {
        let query = match mode {
            Some(m) => sqlx::query(
                "INSERT INTO enforcement_modes (scope, scope_id, mode, set_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (scope, scope_id) \
                 DO UPDATE SET mode = excluded.mode, set_at_ms = excluded.set_at_ms",
            )
            .bind(scope.kind())
            .bind(scope.id())
            .bind(m.as_str())
            .bind(now_ms),
            None => sqlx::query("DELETE FROM enforcement_modes WHERE scope = $1 AND scope_id = $2")
                .bind(scope.kind())
                .bind(scope.id()),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }
}
