"""Appending API actions to the audit trail (hazmon.audit) on behalf of the caller."""

from __future__ import annotations

import logging
from typing import Any

from hazmon import audit
from hazmon.auth import Principal
from hazmon.runtime import Runtime
from hazmon.storage.store import StoreError, guarded

log = logging.getLogger(__name__)


async def record(
    runtime: Runtime,
    user: Principal,
    action: str,
    target: str | None,
    site_id: str | None,
    detail: dict[str, Any] | None = None,
) -> audit.AuditRecord:
    """Append one entry; a failure is logged with the whole entry and raised (the caller answers 5xx)."""

    async def op() -> audit.AuditRecord:
        async with runtime.db.pool.acquire() as conn:
            return await audit.append(
                conn,
                actor=user.label,
                token_id=user.token_id,
                role=user.role.value,
                action=action,
                target=target,
                site_id=site_id,
                detail=detail,
            )

    try:
        return await guarded(op, "audit trail")
    except StoreError:
        log.error(
            "AUDIT NOT RECORDED: %s by %s (token %s) on %s at site %s: %s",
            action,
            user.label,
            user.token_id,
            target,
            site_id,
            detail,
        )
        raise
