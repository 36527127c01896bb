-- Region-scoped regulator tokens (issue 14): a token may cover an administrative division, given as a
-- prefix of the division code in the enterprise's USCC (characters 3-8): '32' a province, '3205' a city,
-- '320506' a county. The token sees every site of every enterprise whose division code starts with one of
-- its regions, resolved when the token is used (an enterprise registered later is covered).
ALTER TABLE api_tokens ADD COLUMN regions text[] NOT NULL DEFAULT '{}';
ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope
    CHECK (role = 'admin' OR cardinality(sites) + cardinality(enterprises) + cardinality(regions) > 0);
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_regions_are_division_codes
    CHECK (array_to_string(regions, ',') ~ '^([0-9]{2,6}(,|$))*$');
