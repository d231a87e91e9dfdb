"""A real ClickHouse server (Debian's ``clickhouse-server``, 18.16) on loopback, for integration tests;
`make debian-deps` installs it.  Free ports, a temporary data directory, our own minimal config (the
package's /etc config is not read), a ``default`` user without password and a ``reader`` user whose
profile is read-only (``readonly = 1``), as a fleet-SQL user would be."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <interserver_http_port>{inter}</interserver_http_port>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  <timezone>UTC</timezone>
</yandex>
"""

USERS = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default><max_memory_usage>2000000000</max_memory_usage></default>
    <readonly><readonly>1</readonly></readonly>
  </profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <reader><password></password><networks><ip>127.0.0.1</ip></networks><profile>readonly</profile><quota>default</quota></reader>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def binary() -> str:
    deadline = time.monotonic() + 300  # `make debian-deps` may still be installing it
    while (path := shutil.which("clickhouse-server")) is None:
        if time.monotonic() > deadline:
            pytest.fail("clickhouse-server is not installed: `make debian-deps` installs Debian's package")
        time.sleep(2)
    return path


@dataclass
class ClickHouse:
    proc: subprocess.Popen
    tcp: int
    http: int
    dir: Path

    def url(self, db: str = "default", user: str | None = None) -> str:
        return f"clickhouse://{user + '@' if user else ''}127.0.0.1:{self.tcp}/{db}"

    def client(self, db: str = "default"):
        from clickhouse_driver import Client

        return Client("127.0.0.1", port=self.tcp, database=db)

    def stop(self) -> None:
        """SIGKILL, as a crash: 18.16's graceful stop waits ~10 s for idle connections, and a test's data
        is thrown away (or, in the outage tests, must survive a crash anyway)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def start_again(self) -> None:
        """Start the server again on the same ports and data (after ``stop``)."""
        self.proc = _spawn(self.dir)
        _wait(self)


def _spawn(directory: Path) -> subprocess.Popen:
    log = open(directory / "stdout.log", "ab")  # noqa: SIM115 - the server owns it while it runs
    return subprocess.Popen([binary(), f"--config-file={directory / 'config.xml'}"], stdout=log,
                            stderr=subprocess.STDOUT, cwd=directory)


def _wait(server: ClickHouse, timeout: float = 60) -> None:
    from clickhouse_driver import Client
    from clickhouse_driver.errors import Error

    deadline = time.monotonic() + timeout
    while True:
        try:
            Client("127.0.0.1", port=server.tcp, connect_timeout=1).execute("SELECT 1")
            return
        except (Error, OSError, EOFError):
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            logs = "".join(p.read_text()[-3000:] for p in (server.dir / "stdout.log", server.dir / "error.log")
                           if p.exists())
            raise AssertionError(f"clickhouse-server did not come up on :{server.tcp}; log:\n{logs}")
        time.sleep(0.2)


@contextmanager
def clickhouse_server(tmp_path: Path):
    directory = tmp_path / "clickhouse"
    for sub in ("data", "tmp", "user_files", "format_schemas"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    tcp, http, inter = free_port(), free_port(), free_port()
    (directory / "config.xml").write_text(CONFIG.format(dir=directory, tcp=tcp, http=http, inter=inter))
    (directory / "users.xml").write_text(USERS)
    server = ClickHouse(_spawn(directory), tcp, http, directory)
    try:
        _wait(server)
        yield server
    finally:
        server.stop()
