//! The rows of idmint's own policy store and of the enforcement modes.

use sqlx::Row;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

use super::{Backend, Error, Store, Topic};
use crate::policy::{Mode, Origin, Policy, PortRange, Scope};

/// Policies per statement: five parameters each stays well under the limits of both databases
/// (SQLite 32,766 parameters, PostgreSQL 65,535).
const ROWS_PER_STATEMENT: usize = 1000;

/// One line of [`Store::policies`]: source, destination, protocol, first and last port.
fn parse_line(line: &str) -> Option<Policy> {
    let mut f = line.split(' ');
    let policy = Policy {
        source: f.next()?.parse().ok()?,
        destination: f.next()?.parse().ok()?,
        protocol: f.next()?.parse().ok()?,
        ports: PortRange::new(f.next()?.parse().ok()?, f.next()?.parse().ok()?).ok()?,
    };
    f.next().is_none().then_some(policy)
}

fn bind_policy<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    p: &Policy,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
        .bind(p.source.to_string())
        .bind(p.destination.to_string())
        .bind(p.protocol.to_string())
        .bind(i64::from(p.ports.start()))
        .bind(i64::from(p.ports.end()))
}

impl Store {
    /// Every policy of `origin`. They come back as one text value, a line per policy: the
    /// driver's cost per row, not the database, is what reading a hundred thousand rows takes.
    pub async fn policies(&self, origin: Origin) -> Result<Vec<Policy>, Error> {
        let line = "source_app || ' ' || destination_app || ' ' || protocol || ' ' || port_start \
                    || ' ' || port_end";
        let sql = match self.backend {
            Backend::Sqlite => {
                format!("SELECT group_concat({line}, char(10)) FROM policies WHERE origin = $1")
            }
            Backend::Postgres => {
                format!("SELECT string_agg({line}, chr(10)) FROM policies WHERE origin = $1")
            }
        };
        let all: Option<String> = sqlx::query_scalar(&sql)
            .bind(origin.as_str())
            .fetch_one(&self.pool)
            .await?;
        all.as_deref()
            .unwrap_or("")
            .lines()
            .map(|l| parse_line(l).ok_or(Error::BadValue("policies")))
            .collect()
    }

    /// Adds `added` to and removes `removed` from the policies of `origin`, all or nothing.
    /// Adding one stored already (by another server polling the same policy server) keeps it.
    pub async fn change_policies(
        &self,
        origin: Origin,
        added: &[Policy],
        removed: &[Policy],
        now_ms: i64,
    ) -> Result<(), Error> {
        let mut tx = self.begin_change().await?;
        for chunk in removed.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from("DELETE FROM policies WHERE origin = $1 AND (");
            for i in 0..chunk.len() {
                let n = 2 + i * 5;
                if i > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str(&format!(
                    "(source_app = ${} AND destination_app = ${} AND protocol = ${} \
                     AND port_start = ${} AND port_end = ${})",
                    n,
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4
                ));
            }
            sql.push(')');
            let mut query = sqlx::query(&sql).bind(origin.as_str());
            for p in chunk {
                query = bind_policy(query, p);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in added.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO policies (origin, source_app, destination_app, protocol, port_start, \
                 port_end, added_at_ms) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = 3 + i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "($1, ${}, ${}, ${}, ${}, ${}, $2)",
                    n,
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4
                ));
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            let mut query = sqlx::query(&sql).bind(origin.as_str()).bind(now_ms);
            for p in chunk {
                query = bind_policy(query, p);
            }
            query.execute(&mut *tx).await?;
        }
        if !added.is_empty() || !removed.is_empty() {
            self.record_change(&mut tx, Topic::Policy, "", now_ms)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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
        let mut tx = self.begin_change().await?;
        query.execute(&mut *tx).await?;
        self.record_change(&mut tx, Topic::Policy, "", now_ms)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
