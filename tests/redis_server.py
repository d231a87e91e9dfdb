"""A real Redis for tests: Debian's ``redis-server`` (``make debian-deps``) on loopback, a free port,
no persistence (no RDB snapshots, no AOF), so a restart starts empty as a fleet's cache would."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port


def redis_binary(wait_s: float = 120.0) -> str:
    """The redis-server binary; waits while `make debian-deps` may still be installing it."""
    deadline = time.monotonic() + wait_s
    while (path := shutil.which("redis-server")) is None:
        if time.monotonic() > deadline:
            pytest.fail("redis-server is missing: `make debian-deps` installs Debian's redis-server")
        time.sleep(2)
    return path


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = self.workdir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server did not come up on {self.port}: "
                                     f"{log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.05)

    def kill(self) -> None:
        """``kill -9``: Redis and everything it held are gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port for the block; stopped (never left running) after it."""
    server = RedisServer(free_port(), workdir).start()
    try:
        yield server
    finally:
        server.stop()
