"""API keys (bearer tokens) for every listener that takes them: the OTLP receivers and the admin API.

    auth:
      keys:
        - name: billing-prod              # shown in logs and metrics; the key never is
          key: ${env:BILLING_OTLP_KEY}    # or key_file: /run/secrets/billing (first line)
          tenant: acme                    # stored on every span as resource attribute tenant.id
          agents: [did:web:billing]       # agent ids the key may speak for; absent: any

A client presents its key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (gRPC metadata or
HTTP headers).  The key is compared with every configured key in constant time (a SHA-256 of each
side, ``hmac.compare_digest``, no early exit), so neither the position of a match nor a common
prefix shows in the time of the answer.

Keys are ``SecretStr``: a config's repr, ``validate`` output and logs show ``**********``.  Worker
processes get them through ``dump_with_secrets`` (a pipe to a child process, never a file or argv).

Light on purpose (pydantic and the standard library): the receivers' configs import it in the
pipeline process, which with worker processes never loads the OTLP servers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from agent_sre.pipeline.component.config import ConfigModel

__all__ = ["SECRET_SAFE_ERRORS", "ApiKeyConfig", "AuthConfig", "AuthFailure", "Authenticator", "Principal", "dump_with_secrets"]

_REVEAL = "reveal_secrets"
SECRET_SAFE_ERRORS = ConfigDict(hide_input_in_errors=True)


class ApiKeyConfig(ConfigModel):
    name: str = ""  # a label for logs and metrics; default: "key-<n>" by position
    key: SecretStr | None = None
    key_file: str | None = None  # the key is the file's first line
    tenant: str | None = Field(default=None, min_length=1)
    agents: list[str] | None = None  # agent ids this key may speak for, its own first; None: any

    @field_validator("key", mode="before")
    @classmethod
    def _digits_are_text(cls, value: Any) -> Any:
        # ${env:KEY} of an all-digit key arrives as a number; a type error would print it.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_file is None):
            raise ValueError("give exactly one of key (e.g. ${env:VAR}) or key_file")
        if self.key is not None and len(self.key.get_secret_value().strip()) < 16:
            raise ValueError("key must be at least 16 characters (use a random token)")
        if self.agents is not None and (not self.agents or not all(self.agents)):
            raise ValueError("agents must list at least one non-empty agent id (leave it out for any agent)")
        return self

    @field_serializer("key", when_used="json")
    def _dump_key(self, key: SecretStr | None, info: SerializationInfo) -> str | None:
        if key is None:
            return None
        return key.get_secret_value() if (info.context or {}).get(_REVEAL) else str(key)

    def secret(self) -> bytes:
        """The key's bytes (read from ``key_file`` now); OSError/ValueError name the file."""
        if self.key is not None:
            return self.key.get_secret_value().strip().encode()
        assert self.key_file is not None
        lines = Path(self.key_file).read_text(encoding="utf-8").splitlines()
        text = lines[0].strip() if lines else ""
        if len(text) < 16:
            raise ValueError(f"key_file {self.key_file}: the key (first line) must be at least 16 characters")
        return text.encode()


class AuthConfig(ConfigModel):
    """A component config that holds one should set ``SECRET_SAFE_ERRORS`` in its model_config: pydantic
    prints an error's input (the key's mapping) in ``str(ValidationError)``, and only the model that
    starts the validation decides.  (The service's config errors never print a mapping.)"""

    keys: list[ApiKeyConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> AuthConfig:
        names = [k.name for k in self.keys if k.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"key names must be unique (repeated: {', '.join(dupes)})")
        return self


def dump_with_secrets(model: BaseModel) -> str:
    """``model`` as JSON with its keys in clear, for a child process that validates it again."""
    return model.model_dump_json(context={_REVEAL: True})


@dataclass(frozen=True)
class Principal:
    """Who an authenticated request speaks for."""

    name: str
    tenant: str | None = None
    agents: tuple[str, ...] | None = None  # None: any agent; the first is the key's own (re-attribution)

    @property
    def bound(self) -> bool:
        return self.agents is not None


class AuthFailure(Exception):
    """No key (``reason`` "missing") or a key that matches none ("invalid")."""

    def __init__(self, reason: str):
        super().__init__("missing credentials: send Authorization: Bearer <key>" if reason == "missing"
                         else "invalid credentials")
        self.reason = reason


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``x-api-key``."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None


class Authenticator:
    """Checks presented keys against the configured ones; built once per listener at start."""

    def __init__(self, config: AuthConfig, component: str, logger: logging.Logger):
        self.component = component
        self._logger = logger
        self._keys = [(hashlib.sha256(k.secret()).digest(),
                       Principal(k.name or f"key-{i + 1}", k.tenant,
                                 tuple(k.agents) if k.agents is not None else None))
                      for i, k in enumerate(config.keys)]
        self._log_lock = threading.Lock()
        self._suppressed = 0
        self._next_log = 0.0

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        """The key's principal, or AuthFailure.  Every configured key is compared, match or not."""
        token = presented_key(authorization, api_key)
        if token is None:
            raise AuthFailure("missing")
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for key_digest, principal in self._keys:
            if hmac.compare_digest(digest, key_digest) and found is None:
                found = principal
        if found is None:
            raise AuthFailure("invalid")
        return found

    def log_failure(self, transport: str, failure: AuthFailure, peer: str | None) -> None:
        """A warning with the component, at most every 10 s (a flood of bad keys must not flood the log)."""
        now = time.monotonic()
        with self._log_lock:
            if now < self._next_log:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._next_log = self._suppressed, 0, now + 10.0
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self._logger.warning("%s: %s: refused a %s request from %s: %s%s", self.component, transport,
                             "keyless" if failure.reason == "missing" else "bad-key", peer or "?", failure, more)
