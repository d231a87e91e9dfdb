"""health_check: GET / answers 200 while the pipeline runs, 503 while it starts or stops, and 503
with the problems while a component reports one (the ``Health`` capability: a store that cannot
write, for instance)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from aiohttp import web

from agent_sre.pipeline.component import Extension, Factory, Kind
from agent_sre.pipeline.component.capabilities import Health
from agent_sre.pipeline.component.config import ConfigModel, HostPort
from agent_sre.pipeline.service.defaults import ADMIN_ENDPOINT


class HealthCheckConfig(ConfigModel):
    endpoint: HostPort = ADMIN_ENDPOINT
    path: str = "/"


class HealthCheck(Extension):
    config: HealthCheckConfig

    def _start(self, host) -> None:
        self._host = host
        self._since = time.time()
        host.http.add_route(self.config.endpoint, "GET", self.config.path, self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        up = datetime.fromtimestamp(self._since, timezone.utc).isoformat()
        problems = {id_: problem for id_, source in self._host.providers(Health).items()
                    if (problem := source.health()) is not None}
        if self._host.ready and not problems:
            return web.json_response({"status": "Server available", "upSince": up,
                                      "uptime": f"{time.time() - self._since:.3f}s"})
        body = {"status": "Server not available", "upSince": up}
        return web.json_response({**body, "problems": problems} if problems else body, status=503)

    def describe(self) -> list[str]:
        return [f"health check on http://{self.config.endpoint}{self.config.path}"]

    def _shutdown(self) -> None:
        self._host.http.remove_routes(self.config.endpoint, [self.config.path])


factory = Factory(type="health_check", kind=Kind.EXTENSION, config_model=HealthCheckConfig, create=HealthCheck,
                  signals=(), description="Liveness/readiness endpoint (200 while the pipeline runs).")
