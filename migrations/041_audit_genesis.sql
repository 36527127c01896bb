-- The audit trail starts with a genesis row (issue 11, item 12), so that an empty trail is itself
-- evidence of tampering: `hazmon audit verify` reports a log without its first row as deleted.
-- The row hashes like any other (hazmon.audit.row_hash): sha256(64 zeros + "\n" + the JSON array
-- [seq, time in µs, actor, token, role, action, target, site, detail]) with detail '{}'.
-- A trail that already has rows keeps them: its first row is the evidence.
DO $$
DECLARE
    t    timestamptz := date_trunc('milliseconds', clock_timestamp());
    body text;
    h    text;
BEGIN
    IF EXISTS (SELECT 1 FROM audit_log) OR EXISTS (SELECT 1 FROM audit_head) THEN
        RETURN;
    END IF;
    body := '[1,' || (extract(epoch FROM t) * 1000000)::bigint::text
            || ',"hazmon",null,null,"audit.genesis",null,null,"{}"]';
    h := encode(sha256(convert_to(repeat('0', 64) || E'\n' || body, 'UTF8')), 'hex');
    INSERT INTO audit_log (seq, at, actor, token_id, role, action, target, site_id, detail, prev_hash, hash)
    VALUES (1, t, 'hazmon', NULL, NULL, 'audit.genesis', NULL, NULL, '{}', repeat('0', 64), h);
    INSERT INTO audit_head (id, seq, hash) VALUES (true, 1, h);
END $$;
