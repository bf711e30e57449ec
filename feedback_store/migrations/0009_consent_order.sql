-- Glance schema 9: consent decisions in the order they were made. The newest decision
-- was the one with the latest wall-clock time: after the clock was set back (a network
-- time correction, a dual-boot machine whose hardware clock keeps local time), a
-- "pointer off" sorted before the "on" it replaced and the consent was on again at the
-- next start. ``seq`` counts decisions; ``at_wall_ns`` stays what the user is shown.
ALTER TABLE consents ADD COLUMN seq BIGINT;
UPDATE consents SET seq = ordered.n
FROM (SELECT rowid AS row_id, row_number() OVER (ORDER BY at_wall_ns, rowid) AS n FROM consents) ordered
WHERE consents.rowid = ordered.row_id;
