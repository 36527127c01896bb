-- Hidden-hazard self-check and self-report (隐患自查自报, issue 13).
-- One row per hidden hazard an enterprise finds; every change is also in the audit trail
-- (action finding.create / finding.update, target 'finding:<id>'), in the same transaction.

CREATE TABLE hazard_findings (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id           text NOT NULL REFERENCES sites (id),
    enterprise_id     text NOT NULL,
    installation_id   text,
    equipment_id      text,
    description       text NOT NULL CHECK (length(description) > 0),
    grade             text NOT NULL CHECK (grade IN ('general', 'major')),
    found_at          timestamptz NOT NULL,
    found_by          text NOT NULL CHECK (length(found_by) > 0),
    corrective_action text,
    deadline          date NOT NULL,
    responsible       text,
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'rectifying', 'closed')),
    closed_at         timestamptz,
    evidence          text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    updated_by        text NOT NULL,
    version           integer NOT NULL DEFAULT 1,
    -- a closed finding carries its closing time and the evidence of the rectification
    CHECK ((status = 'closed') = (closed_at IS NOT NULL)),
    CHECK (status <> 'closed' OR length(coalesce(evidence, '')) > 0)
);
CREATE INDEX hazard_findings_site ON hazard_findings (site_id, status);
CREATE INDEX hazard_findings_enterprise ON hazard_findings (enterprise_id, status);
