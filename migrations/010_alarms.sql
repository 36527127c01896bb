-- Alarm journal (append-only record of every alarm state transition) and the current state of
-- every alarm, upserted in the same transaction as the journal rows (src/hazmon/journal.py).

CREATE TABLE alarm_journal (
    id          bigserial PRIMARY KEY,
    ts          timestamptz NOT NULL,
    alarm_id    text NOT NULL,
    tag_id      text,
    site_id     text,
    condition   text NOT NULL,
    priority    text NOT NULL CHECK (priority IN ('critical', 'high', 'medium', 'low')),
    action      text NOT NULL,
    prev_state  text NOT NULL,
    new_state   text NOT NULL,
    value       double precision,
    "limit"     double precision,
    "user"      text,
    comment     text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alarm_journal_site_ts ON alarm_journal (site_id, ts);
CREATE INDEX alarm_journal_alarm_ts ON alarm_journal (alarm_id, ts);

CREATE FUNCTION alarm_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'alarm_journal is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER alarm_journal_no_update_delete BEFORE UPDATE OR DELETE ON alarm_journal
    FOR EACH ROW EXECUTE FUNCTION alarm_journal_append_only();
CREATE TRIGGER alarm_journal_no_truncate BEFORE TRUNCATE ON alarm_journal
    FOR EACH STATEMENT EXECUTE FUNCTION alarm_journal_append_only();

CREATE TABLE alarm_state (
    alarm_id       text PRIMARY KEY,
    tag_id         text,
    site_id        text,
    condition      text NOT NULL,
    priority       text NOT NULL,
    state          text NOT NULL,
    active         boolean NOT NULL,
    acked          boolean NOT NULL,
    value          double precision,
    "limit"        double precision,
    since          timestamptz NOT NULL,
    shelved_until  timestamptz,
    out_of_service boolean NOT NULL DEFAULT false,
    suppressed     boolean NOT NULL DEFAULT false,
    "user"         text,
    comment        text
);
CREATE INDEX alarm_state_site_state ON alarm_state (site_id, state);
