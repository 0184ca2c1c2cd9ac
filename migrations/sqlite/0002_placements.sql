-- Registered app instances: what the SDS sockets and the issuance path are bound to.
CREATE TABLE placements (
    instance_guid  TEXT   PRIMARY KEY,
    app_guid       TEXT   NOT NULL,
    space_guid     TEXT,
    org_guid       TEXT,
    cell_id        TEXT   NOT NULL,
    container_ip   TEXT,
    registered_at  BIGINT NOT NULL
);
