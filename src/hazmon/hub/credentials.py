"""The credentials file of the hub: what the authority issued to each enterprise, by application id.

```yaml
- app_id: hz-320500-0001
  app_secret: "…"                          # the HMAC-SM3 secret
  sm4_key: 0123456789abcdeffedcba9876543210  # 32 hex digits
  sm4_iv: 00112233445566778899aabbccddeeff   # 32 hex digits
  enterprises: [91320500MA1XK7Q211]          # optional: the USCCs this app id may send for
```

``load_credentials`` checks the whole file and raises ``InvalidFile`` listing every problem with its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel

from hazmon.errors import InvalidFile, Problem, read_yaml, validate_model
from hazmon.regulator.sm4 import parse_hex_key
from hazmon.regulator.uplink_payload import Credentials

Hex128 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$", description="32 hexadecimal digits")]
Uscc = Annotated[str, Field(pattern=r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$")]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    app_id: str = Field(min_length=1, max_length=200)
    app_secret: str = Field(min_length=1)
    sm4_key: Hex128
    sm4_iv: Hex128
    enterprises: list[Uscc] | None = None


class _File(RootModel[list[_Entry]]):
    pass


@dataclass(frozen=True, slots=True)
class HubCredentials:
    by_app: dict[str, Credentials]
    enterprises: dict[str, frozenset[str]]  # app id -> the USCCs it may send for (absent: any)


def load_credentials(path: Path) -> HubCredentials:
    entries = validate_model(_File, read_yaml(path), str(path)).root
    problems = []
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.app_id in seen:
            problems.append(Problem(f"[{i}].app_id", f"duplicate app_id {e.app_id!r} (first at [{seen[e.app_id]}])"))
        seen.setdefault(e.app_id, i)
    if not entries:
        problems.append(Problem("", "no credentials: the hub would refuse every enterprise"))
    if problems:
        raise InvalidFile(str(path), problems)
    return HubCredentials(
        by_app={
            e.app_id: Credentials(
                e.app_id,
                e.app_secret.encode(),
                parse_hex_key(e.sm4_key, "sm4_key"),
                parse_hex_key(e.sm4_iv, "sm4_iv"),
            )
            for e in entries
        },
        enterprises={e.app_id: frozenset(e.enterprises) for e in entries if e.enterprises is not None},
    )
