"""Where the backends are: a static list, or every address a DNS name resolves to (a Kubernetes
headless Service), re-resolved on an interval.  A failed resolution keeps the last good list."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket

from agent_sre.exporters.loadbalancing.config import ResolverConfig


def _endpoint(address: str, port: int, http: bool) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}" if http else f"{host}:{port}"


class Resolver:
    def __init__(self, config: ResolverConfig, http: bool):
        self.config = config
        self.http = http  # otlphttp backends are URLs
        self.kind = "static" if config.static is not None else "dns"
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lb-dns") if config.dns else None

    @property
    def interval(self) -> float | None:
        return self.config.dns.interval if self.config.dns is not None else None

    def resolve(self) -> list[str]:
        """The sorted endpoints; raises OSError (or TimeoutError) when DNS does not answer."""
        if self.config.static is not None:
            return sorted(set(self.config.static.hostnames))
        dns = self.config.dns
        assert dns is not None and self._pool is not None
        future = self._pool.submit(socket.getaddrinfo, dns.hostname, dns.port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=dns.timeout)
        except concurrent.futures.TimeoutError as exc:
            raise TimeoutError(f"resolving {dns.hostname} took more than {dns.timeout}s") from exc
        return sorted({_endpoint(str(info[4][0]), dns.port, self.http) for info in infos})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
