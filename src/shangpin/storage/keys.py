"""API keys for the service: created by `shangpin keys create`, stored only as SHA-256 hashes.

A token reads `sp_<prefix>_<secret>`: the prefix finds the row, the hash of the whole token proves it. Scopes
nest: `read` may call the model and read the queue, `write` may also store predictions, post events and review,
`admin` may also manage keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shangpin.errors import ConfigError, NotFoundError
from shangpin.storage.db import ApiKeyRow, Store

SCOPES = ("read", "write", "admin")
TOKEN_PREFIX = "sp_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's public facts (never its token)."""

    id: int
    prefix: str
    scope: str
    name: str | None
    created_at: datetime
    revoked: bool = False

    def allows(self, scope: str) -> bool:
        """Whether this key's scope includes `scope` (read < write < admin)."""
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    @property
    def actor(self) -> str:
        """How the audit trail names this key's decisions."""
        return f"key:{self.prefix}" + (f" ({self.name})" if self.name else "")


class KeyStore(Store):
    """API keys in the operational database at `url`."""

    def create(self, scope: str, name: str | None = None) -> tuple[ApiKey, str]:
        """A new key and its token; the token is shown once and cannot be recovered from the database.

        Raises:
            ConfigError: `scope` is not read, write or admin.
        """
        if scope not in SCOPES:
            raise ConfigError(f"key scope must be one of {', '.join(SCOPES)}, found {scope!r}.")
        prefix = secrets.token_hex(4)
        token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(24)}"
        row = ApiKeyRow(
            prefix=prefix, key_hash=_hash(token), scope=scope, name=name, created_at=datetime.now(UTC)
        )
        with Session(self._engine) as session, session.begin():
            session.add(row)
            session.flush()
            return _key(row), token

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to, or None when it is unknown, malformed or revoked."""
        parts = token.split("_", 2)
        if len(parts) != 3 or f"{parts[0]}_" != TOKEN_PREFIX:
            return None
        with Session(self._engine) as session:
            row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix == parts[1])).first()
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, _hash(token)):
                return None
            return _key(row)

    def list(self) -> list[ApiKey]:
        with Session(self._engine) as session:
            return [_key(r) for r in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke(self, prefix: str) -> ApiKey:
        """Revoke the key with this prefix (the part after `sp_` in its token, also shown by `keys list`)."""
        with Session(self._engine) as session, session.begin():
            row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix)).first()
            if row is None:
                raise NotFoundError(
                    f"no API key with prefix {prefix!r}; list them with 'shangpin keys list'."
                )
            session.execute(
                update(ApiKeyRow).where(ApiKeyRow.id == row.id).values(revoked_at=datetime.now(UTC))
            )
            session.refresh(row)
            return _key(row)


def _hash(token: str) -> str:
    # Tokens carry 192 random bits, so a plain SHA-256 cannot be brute-forced; no slow KDF is needed.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _key(row: ApiKeyRow) -> ApiKey:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return ApiKey(
        id=row.id,
        prefix=row.prefix,
        scope=row.scope,
        name=row.name,
        created_at=created,
        revoked=row.revoked_at is not None,
    )
