"""Real servers the integration tests start on loopback: Arize Phoenix and MLflow, each installed by
`make test` (the Makefile's test-deps) in its own virtual environment under .servers/, so our
dependencies stay clean.  A missing server fails the test: `make test` always installs it."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

SERVERS = Path(os.environ.get("AGENT_SRE_SERVERS", REPO / ".servers"))


def server_binary(venv: str, name: str) -> Path:
    path = SERVERS / venv / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test-deps` installs {venv} in its own virtual environment")
    return path


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{url} did not come up; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@dataclass
class Server:
    proc: subprocess.Popen
    http: int
    grpc: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_phoenix(workdir: Path) -> Server:
    binary = server_binary("phoenix", "phoenix")
    http, grpc = free_port(), free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(workdir), "PHOENIX_PORT": str(http),
           "PHOENIX_GRPC_PORT": str(grpc), "PHOENIX_HOST": "127.0.0.1", "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = workdir / "phoenix.log"
    proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    wait_for(f"http://127.0.0.1:{http}/v1/projects", proc, log)
    return Server(proc, http, grpc)


def start_mlflow(workdir: Path) -> Server:
    binary = server_binary("mlflow", "mlflow")
    http = free_port()
    log = workdir / "mlflow.log"
    proc = subprocess.Popen([str(binary), "server", "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
                             "--default-artifact-root", str(workdir / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(http), "--workers", "1"], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            cwd=workdir)
    wait_for(f"http://127.0.0.1:{http}/health", proc, log)
    return Server(proc, http)
