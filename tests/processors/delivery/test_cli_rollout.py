"""`agent-sre rollout`: status from a stopped pipeline's store (the file a real processor wrote), start's
validation before any pipeline is asked, and a clear error when no pipeline answers."""

from __future__ import annotations

import json

import pytest

from agent_sre.pipeline.cli.main import main
from tests.conftest import free_port
from tests.processors.delivery.helpers import BASE, CAND, HOUR_NS, MINUTE_NS, T0, canary, rig, task  # noqa: F401 - versions named in the output


@pytest.fixture(scope="module")
def stopped_store(tmp_path_factory):
    """A store where rollout bot-1-5 advanced once and was then rolled back, its pipeline stopped."""
    box = rig(tmp_path_factory.mktemp("cli"))
    box.start(canary(), who="alice")
    box.add(*[task(BASE, T0 + i * 10**9) for i in range(100)], *[task(CAND, T0 + i * MINUTE_NS) for i in range(20)])
    box.evaluate(T0 + 2 * HOUR_NS)
    box.add(*[task(CAND, T0 + 2 * HOUR_NS + i * MINUTE_NS, ok=i % 4 != 0) for i in range(20)])
    box.evaluate(T0 + 3 * HOUR_NS)
    box.shutdown()
    box.store.close()
    return str(box.store.path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_lists_the_rollouts_of_a_stopped_pipelines_store(stopped_store, capsys):
    code, out, _ = run(capsys, "rollout", "status", "--db", stopped_store)
    assert code == 0
    header, _, row = out.splitlines()[:3]
    assert [c.strip() for c in header.split(" | ")] == ["rollout", "agent", "strategy", "versions", "state", "step",
                                                        "weight", "updated (UTC)", "reason"]
    assert [c.strip() for c in row.split(" | ")][:7] == ["bot-1-5", "support-bot", "canary", "1.4.0 -> 1.5.0",
                                                         "rolled_back", "2/4", "0%"]
    assert "rollback condition error_rate >= 0.05 holds (candidate: 0.25)" in row


def test_status_of_one_rollout_shows_its_analysis_and_decisions(stopped_store, capsys):
    code, out, _ = run(capsys, "rollout", "status", "bot-1-5", "--db", stopped_store, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert [(h["decision"], h["weight"], h["by"]) for h in doc["history"]] == [
        ("start", 5.0, "alice"), ("advance", 25.0, ""), ("rollback", 0.0, "")]
    assert doc["analysis"]["candidate"]["tasks"] == 20 and doc["analysis"]["candidate"]["successes"] == 15
    assert doc["document"]["spec"]["steps"][1]["weight"] == 25
    code, out, _ = run(capsys, "rollout", "status", "bot-1-5", "--db", stopped_store)
    assert out.startswith("rollout bot-1-5 of agent support-bot (canary): 1.4.0 -> 1.5.0\n"
                          "state rolled_back, step 2/4 canary-25, 0% to the candidate\n")
    assert "tasks              | 0              | 20" in out  # the 25 % step had no baseline traffic
    assert "success rate       | -              | 0.75" in out
    assert ("2023-11-15 01:13:00 | rollback | 0%     | -     | rollback condition error_rate >= 0.05 holds "
            "(candidate: 0.25)") in out


def test_status_of_an_unknown_rollout_is_an_error(stopped_store, capsys):
    code, _, err = run(capsys, "rollout", "status", "nope", "--db", stopped_store)
    assert (code, err.strip()) == (1, "agent-sre: no rollout 'nope'")


def test_start_reports_every_problem_of_the_file_before_asking_a_pipeline(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(canary(min_samples=0).replace('candidate: "1.5.0"', 'candidat: "1.5.0"'))
    code, _, err = run(capsys, "rollout", "start", str(bad), "--endpoint", f"127.0.0.1:{free_port()}")
    assert code == 2
    assert f"invalid configuration {bad} (3 problems):" in err
    assert "spec::analysis::min_samples: Input should be greater than or equal to 1 (got 0)" in err
    assert "spec::candidate: is required" in err and "'spec' has invalid keys: candidat" in err


@pytest.mark.parametrize("argv", [["start", "FILE"], ["promote", "bot-1-5", "--full"], ["abort", "bot-1-5"]])
def test_starting_or_changing_a_rollout_needs_a_running_pipeline(tmp_path, capsys, argv):
    good = tmp_path / "good.yaml"
    good.write_text(canary())
    port = free_port()
    code, _, err = run(capsys, "rollout", *[str(good) if a == "FILE" else a for a in argv], "--endpoint",
                       f"127.0.0.1:{port}")
    assert code == 1
    verb = "start" if argv[0] == "start" else "change"
    assert f"no pipeline answers at 127.0.0.1:{port}; rollouts {verb} only in a running pipeline" in err
