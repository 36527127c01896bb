-- Site-scoped identifiers (issue 14): a tag id is unique within its site, not across the database, so
-- two enterprises may both have a T101.LT. Readings keep referring to the tag's permanent integer key.
ALTER TABLE tags DROP CONSTRAINT IF EXISTS tags_id_key;
ALTER TABLE tags ADD CONSTRAINT tags_site_id_id_key UNIQUE (site_id, id);

-- Alarm ids name their site: T101.LT:level.HH becomes demo-tank-farm/T101.LT:level.HH, for tag alarms and
-- a device's communication alarm alike; a system alarm of the service itself (hazmon.<component>) has no
-- site of its own and keeps its name. Rows written before this migration are given the new form, so the
-- journal and the current state of an alarm keep one id across the upgrade. The journal is append-only;
-- only this rewrite of the id's form (no other column) goes around its trigger, inside the migration's
-- transaction.
UPDATE alarm_state SET alarm_id = site_id || '/' || alarm_id
 WHERE site_id IS NOT NULL AND position('/' IN alarm_id) = 0 AND alarm_id NOT LIKE 'hazmon.%';

ALTER TABLE alarm_journal DISABLE TRIGGER alarm_journal_no_update_delete;
UPDATE alarm_journal SET alarm_id = site_id || '/' || alarm_id
 WHERE site_id IS NOT NULL AND position('/' IN alarm_id) = 0 AND alarm_id NOT LIKE 'hazmon.%';
ALTER TABLE alarm_journal ENABLE TRIGGER alarm_journal_no_update_delete;
