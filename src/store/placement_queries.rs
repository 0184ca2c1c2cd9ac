//! The placement registry's rows. Every change is numbered in the change feed, so servers
//! sharing the database take it up.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Error, Store, Topic};
use crate::placement::Placement;

const COLUMNS: &str = "instance_guid, app_guid, space_guid, org_guid, cell_id, container_ip";

impl Store {
    /// Every registered placement, by instance GUID.
    pub async fn placements(&self) -> Result<Vec<Placement>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM placements ORDER BY instance_guid"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(placement).collect()
    }

    /// The placement of `instance_guid`, if it is registered.
    pub async fn placement(&self, instance_guid: &str) -> Result<Option<Placement>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM placements WHERE instance_guid = $1"
        ))
        .bind(instance_guid)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(placement).transpose()
    }

    /// Adds a placement. Returns false, changing nothing, when the instance is registered
    /// already (perhaps by another server a moment ago).
    pub async fn insert_placement(&self, p: &Placement, now_ms: i64) -> Result<bool, Error> {
        let mut tx = self.begin_change().await?;
        let inserted = sqlx::query(
            "INSERT INTO placements (instance_guid, app_guid, space_guid, org_guid, cell_id, \
             container_ip, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (instance_guid) DO NOTHING",
        )
        .bind(p.instance_guid.as_str())
        .bind(p.app_guid.as_str())
        .bind(p.space_guid.as_ref().map(|g| g.as_str()))
        .bind(p.org_guid.as_ref().map(|g| g.as_str()))
        .bind(p.cell_id.as_str())
        .bind(p.container_ip.map(|ip| ip.to_string()))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        self.record_change(&mut tx, Topic::Placement, p.instance_guid.as_str(), now_ms)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a placement. Returns whether there was one.
    pub async fn delete_placement(&self, instance_guid: &str, now_ms: i64) -> Result<bool, Error> {
        let mut tx = self.begin_change().await?;
        let done = sqlx::query("DELETE FROM placements WHERE instance_guid = $1")
            .bind(instance_guid)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.record_change(&mut tx, Topic::Placement, instance_guid, now_ms)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn placement(r: &AnyRow) -> Result<Placement, Error> {
    let text = |col: &str| r.try_get::<String, _>(col);
    let opt = |col: &str| r.try_get::<Option<String>, _>(col);
    let bad = |_| Error::BadValue("placements");
    Ok(Placement {
        instance_guid: text("instance_guid")?.parse().map_err(bad)?,
        app_guid: text("app_guid")?.parse().map_err(bad)?,
        space_guid: opt("space_guid")?
            .map(|g| g.parse())
            .transpose()
            .map_err(bad)?,
        org_guid: opt("org_guid")?
            .map(|g| g.parse())
            .transpose()
            .map_err(bad)?,
        cell_id: text("cell_id")?.parse().map_err(bad)?,
        container_ip: opt("container_ip")?
            .map(|ip| ip.parse())
            .transpose()
            .map_err(|_| Error::BadValue("placements"))?,
    })
}
