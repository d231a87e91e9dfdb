"""The built wheel, as the Dockerfile installs it: every module and shipped YAML, and its runtime requirements.

An editable install maps whole directories, so a package missing from pyproject's explicit
``packages`` list only shows up in a real (non-editable) install, e.g. the container image.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Source directory -> the package it is installed as (pyproject's [tool.setuptools.package-dir]).
SOURCE_PACKAGES = {
    "pipeline": "agent_sre/pipeline",
    "receivers": "agent_sre/receivers",
    "processors": "agent_sre/processors",
    "exporters": "agent_sre/exporters",
    "config": "agent_sre/config",
    # what runs inside an agent, importable under short names (agent_sre.replay.tools, agent_sre.chaos, ...)
    "pipeline/client/replay": "agent_sre/replay",
    "pipeline/client/chaos": "agent_sre/chaos",
    "pipeline/client/delivery": "agent_sre/delivery",
    "pipeline/client/instrument": "agent_sre/instrument",
}
# What the Dockerfile's build stage copies; building from a copy also keeps a stale build/ out of the wheel.
BUILD_CONTEXT_FILES = ("pyproject.toml", "README.md", "setup.py")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_CONTEXT_FILES:
        shutil.copy2(REPO / name, src / name)
    for name in {n.split("/")[0] for n in SOURCE_PACKAGES}:  # the top-level folders (the client's are inside)
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend comes from this environment (the `test` extra), not the network.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    (path,) = out.glob("agent_sre-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def source_files() -> set[str]:
    """Every module and YAML file in the source tree, as its path inside the wheel."""
    files = set()
    for directory in SOURCE_PACKAGES:
        for path in (REPO / directory).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                # the most specific mapping wins: pipeline/client/chaos is agent_sre/chaos, not agent_sre/pipeline/...
                source = max((d for d in SOURCE_PACKAGES if path.is_relative_to(REPO / d)), key=len)
                files.add(f"{SOURCE_PACKAGES[source]}/{path.relative_to(REPO / source).as_posix()}")
    return files


def test_wheel_ships_every_module_and_yaml_file_in_the_source_tree(wheel: zipfile.ZipFile):
    missing = sorted(source_files() - set(wheel.namelist()))
    assert not missing, f"missing from the wheel (add the package to pyproject's packages): {missing}"


def test_wheel_requires_psutil_at_runtime(wheel: zipfile.ZipFile):
    (metadata,) = (n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = email.parser.Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []
    # Requirements under an extra (`; extra == "test"`) are not installed by `pip install agent-sre`.
    runtime = {re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert "psutil" in runtime, f"psutil is imported by processors/memory_limiter but not required: {requires}"


def test_wheel_ships_every_c_extension_compiled(wheel: zipfile.ZipFile):
    """The decoder, both encoders (protobuf, JSON) and the normalisation's step: without them the receiver is
    5-6x costlier per span, the first OTLP exporter ~6x, OTLP/JSON ~7x and the normalisation ~1.4x (gcc and
    Python's headers are on every machine `make test` sets up)."""
    sources = sorted(p.stem for p in (REPO / "pipeline" / "pdata").glob("_*.c"))
    assert sources == ["_normalize", "_otlp_decode", "_otlp_encode", "_otlp_json"]
    built = {n.rsplit("/", 1)[-1].split(".", 1)[0] for n in wheel.namelist() if n.endswith(".so")}
    assert set(sources) <= built, f"not compiled into the wheel: {sorted(set(sources) - built)}"
