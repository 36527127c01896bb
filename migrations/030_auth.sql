-- API tokens and the audit trail (issue 6).

-- A token is shown once when created; only the SHA-256 of the whole token string is kept.
-- The public id (also embedded in the token, `hzm_<id>_<secret>`) names it in lists and revocation.
CREATE TABLE api_tokens (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('operator', 'engineer', 'regulator', 'admin')),
    sites         text[] NOT NULL DEFAULT '{}',
    enterprises   text[] NOT NULL DEFAULT '{}',
    secret_sha256 bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    revoked_at    timestamptz,
    CHECK (role = 'admin' OR cardinality(sites) + cardinality(enterprises) > 0)
);

-- Append-only audit trail: each row's hash covers its content and the previous row's hash.
-- UPDATE, DELETE and TRUNCATE are refused by triggers; `hazmon audit verify` detects a row
-- edited, inserted or deleted by someone who got around them (the chain and audit_head break).
CREATE TABLE audit_log (
    seq       bigint PRIMARY KEY CHECK (seq > 0),
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    token_id  text,
    role      text,
    action    text NOT NULL,
    target    text,
    site_id   text,
    detail    text NOT NULL,  -- canonical JSON, hashed as stored
    prev_hash text NOT NULL,
    hash      text NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- The newest row's seq and hash, updated in the same transaction as each append: deleting the
-- last rows of the log (which leaves the chain itself intact) is caught against it.
CREATE TABLE audit_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint NOT NULL,
    hash text NOT NULL
);

CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END $$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
