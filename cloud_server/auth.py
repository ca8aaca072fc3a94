"""The optional shared API key for REST and gRPC."""

from __future__ import annotations

import hmac

from pydantic import SecretStr


def bearer_ok(header: str | None, key: SecretStr | None) -> bool:
    """True when no key is configured or ``header`` is exactly ``Bearer <key>``. Constant-time."""
    if key is None:
        return True
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode())
