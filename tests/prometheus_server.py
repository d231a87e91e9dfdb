"""A real Prometheus (Debian's package) on loopback, for integration tests; `make test` installs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_http


def binary(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test-deps` installs Debian's package")
    return path


@contextmanager
def prometheus(tmp_path: Path, target_port: int | Sequence[int], rule_files: list[Path] = (),
               remote_write_receiver: bool = False):
    """Scrapes 127.0.0.1:target_port (or each of several ports) every second and evaluates rule_files every
    second; with ``remote_write_receiver`` it also accepts remote writes at /api/v1/write."""
    port = free_port()
    rules = "".join(f"  - {p}\n" for p in rule_files)
    ports = [target_port] if isinstance(target_port, int) else list(target_port)
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                      + (f"rule_files:\n{rules}" if rules else "")
                      + f"scrape_configs:\n  - job_name: agent_sre\n"
                        f"    static_configs: [{{targets: [{targets}]}}]\n")
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary(), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}",
                                 *(["--web.enable-remote-write-receiver"] if remote_write_receiver else [])],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
        yield PrometheusApi(port, log_path)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class PrometheusApi:
    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.log_path = log_path

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]

    def query_until(self, query: str, timeout: float = 60) -> list[dict]:
        """The instant-query result once it is not empty."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.get("/api/v1/query", query=query)["result"]
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus never returned {query}; log:\n{self.log_path.read_text()}")
            time.sleep(0.5)
