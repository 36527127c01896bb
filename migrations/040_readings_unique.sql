-- A reading is stored once per (tag, time) (issue 11, item 10): a gateway that sends the same value
-- again after a restart (an OPC UA subscription's initial values, a replayed spool) must not add a
-- second row. The store COPYs a batch into a staging table and inserts from it with
-- ON CONFLICT DO NOTHING against this key. TimescaleDB requires the partitioning column (time) in
-- every unique index of a hypertable; (tag, time) has it.

-- Copies left by earlier restarts: keep one row per (tag, time). Duplicates share their time, hence
-- their chunk, so (tableoid, ctid) names a row on a hypertable as on a plain table.
DELETE FROM readings r
USING (
    SELECT tableoid AS t, ctid AS c,
           row_number() OVER (PARTITION BY tag, time ORDER BY tableoid, ctid) AS n
    FROM readings
) d
WHERE r.tableoid = d.t AND r.ctid = d.c AND d.n > 1;

-- The unique index replaces the plain (tag, time DESC) index that served series and latest values.
DROP INDEX IF EXISTS readings_tag_time;
CREATE UNIQUE INDEX readings_tag_time ON readings (tag, time DESC);
