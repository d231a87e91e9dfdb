"""Fixtures for the clickhouse exporter: the factory registered (until the registry lists it) and a real
18.16 server for the module."""

from __future__ import annotations

import pytest

from agent_sre.exporters.clickhouse.factory import factory
from agent_sre.pipeline.component import Kind
from agent_sre.pipeline.component.registry import registry
from tests.clickhouse_server import clickhouse_server

if registry.get(Kind.EXPORTER, "clickhouse") is None:
    registry.register(factory)


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory):
    with clickhouse_server(tmp_path_factory.mktemp("ch")) as server:
        yield server
