//! The placement registry's rows.

use sqlx::Row;

use super::{Error, Store};
use crate::placement::Placement;

impl Store {
    /// Every registered placement, by instance GUID.
    pub async fn placements(&self) -> Result<Vec<Placement>, Error> {
        let rows = sqlx::query(
            "SELECT instance_guid, app_guid, space_guid, org_guid, cell_id, container_ip \
             FROM placements ORDER BY instance_guid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
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
            })
            .collect()
    }

    /// Adds a placement; fails if the instance is already registered.
    pub async fn insert_placement(&self, p: &Placement, now_ms: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO placements (instance_guid, app_guid, space_guid, org_guid, cell_id, \
             container_ip, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(p.instance_guid.as_str())
        .bind(p.app_guid.as_str())
        .bind(p.space_guid.as_ref().map(|g| g.as_str()))
        .bind(p.org_guid.as_ref().map(|g| g.as_str()))
        .bind(p.cell_id.as_str())
        .bind(p.container_ip.map(|ip| ip.to_string()))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a placement. Returns whether there was one.
    pub async fn delete_placement(&self, instance_guid: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM placements WHERE instance_guid = $1")
            .bind(instance_guid)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
