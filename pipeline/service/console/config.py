"""The console's settings: the admin API's listener, guard and keys, and how often pages refresh."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from agent_sre.pipeline.component.auth import SECRET_SAFE_ERRORS
from agent_sre.pipeline.component.config import ConfigModel, Duration, HostPort
from agent_sre.pipeline.service.admin import AdminAuthConfig
from agent_sre.pipeline.service.defaults import ADMIN_ENDPOINT


class ConsoleConfig(ConfigModel):
    model_config = ConfigDict(**ConfigModel.model_config, **SECRET_SAFE_ERRORS)

    # The admin extension's endpoint: the console's routes join its listener (and its TLS, if any).
    endpoint: HostPort = ADMIN_ENDPOINT
    # The same keys as the admin API's `auth`; with reads: true every page needs one (Authorization:
    # Bearer, or X-Api-Key, e.g. set by a reverse proxy), else pages are open like the admin API's GETs.
    # A key with a tenant (which needs reads: true) sees that tenant's data only (scope.py).
    auth: AdminAuthConfig | None = None
    allowed_hosts: list[str] = Field(default_factory=list)  # as the admin API's (admin_guard.py)
    storage: str = ""  # which duckdb exporter's store; empty: the only one
    # Pages poll: a fleet overview reloads itself this often (0: never).
    refresh: Duration = Field(default="10s", ge=0)  # type: ignore[assignment]
    # The SQL box's limits (the sandbox of POST /v1/query): rows shown and downloaded, time.
    max_rows: int = Field(default=1_000, gt=0)
    query_timeout: Duration = Field(default="10s", gt=0)  # type: ignore[assignment]
