"""Where the pipeline process's CPU goes, per thread: CPU per committed span of each of its threads, for a
config at a given rate (the embedded default and config/store-only.yaml by default, one after the other).

Python does not give its threads' names to the OS, so the pipeline is started with a sitecustomize (in a
temporary directory on its PYTHONPATH, not shipped) that names each native thread after its Python
thread (prctl PR_SET_NAME, 15 characters); each thread's user + system time is read from
/proc/<pid>/task/*/stat before and after one phase of `bench/ingest.py`'s clients.  Threads of one name
are summed (the gRPC server's pool threads keep their own numbered names, shown summed as otlp-grpc).
With ``--rounds N`` the configs are run in turn N times (interleaved, as bench/ingest.py does: one phase
moves by up to ±30 % between runs on a shared 2-core box) and each thread's figure is given as
min – median – max.

    .venv/bin/python bench/thread_cpu.py [--rate 0] [--seconds 15] [--configs default,store-only] [--rounds 1]

``--rate 0``: as fast as the pipeline takes it; otherwise spans/s over all senders.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ingest  # noqa: E402

NAMING = """import ctypes, threading
_prctl = ctypes.CDLL(None).prctl
_inner = threading.Thread._bootstrap_inner
def _named(self):
    try:
        _prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass
    return _inner(self)
threading.Thread._bootstrap_inner = _named
"""


def thread_ticks(pid: int) -> collections.Counter:
    """Clock ticks of user + system time per thread name of process ``pid``."""
    out: collections.Counter = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[name] += int(fields[11]) + int(fields[12])
    return out


def measure(name: str, args, site: str) -> dict[str, float]:
    """One phase of ``name`` (a config of config/, or the embedded default): CPU µs per committed span by thread."""
    config = None if name == "default" else (ingest.CONFIG / f"{name}.yaml").read_text()
    p = ingest.start_pipeline(config, extra_env={"PYTHONPATH": site})
    pid = p["server"].pid
    try:
        ingest.run_phase(f"{name}: warm-up", "grpc", p["grpc"], p["admin"], pid, 5, args.clients, args.threads,
                         p["metrics"], args.rate)
        before, count = thread_ticks(pid), ingest.count_spans(p["admin"])
        ingest.run_phase(name, "grpc", p["grpc"], p["admin"], pid, args.seconds, args.clients, args.threads,
                         p["metrics"], args.rate)
        after, spans = thread_ticks(pid), ingest.count_spans(p["admin"]) - count
    finally:
        ingest.stop_pipeline(p)
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    out: collections.Counter = collections.Counter()
    for thread in after:
        group = "otlp-grpc" if thread.startswith("otlp-grpc_") else thread
        out[group] += (after[thread] - before.get(thread, 0)) * tick_s / spans * 1e6
    return dict(out)


def _spread(values: list[float]) -> str:
    v = sorted(values)
    return f"{v[0]:6.2f}" if len(v) == 1 else f"{v[0]:6.2f} – {v[len(v) // 2]:6.2f} – {v[-1]:6.2f}"


def main() -> None:
    args = ingest.phase_args(__doc__, **{"--rate": {"type": float, "default": 0.0},
                                         "--configs": {"default": "default,store-only"},
                                         "--rounds": {"type": int, "default": 1}})
    site = tempfile.mkdtemp(prefix="agent-sre-threads-")
    Path(site, "sitecustomize.py").write_text(NAMING)
    names = args.configs.split(",")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(measure(name, args, site))
    for name in names:
        threads = sorted({t for r in runs[name] for t in r}, key=lambda t: -max(r.get(t, 0.0) for r in runs[name]))
        print(f"\n{name}: CPU per committed span by thread, µs ({args.rounds} round(s): min – median – max)")
        for thread in threads:
            values = [r.get(thread, 0.0) for r in runs[name]]
            if max(values) >= 0.05:
                print(f"  {thread:<16} {_spread(values)}")
        print(f"  {'all':<16} {_spread([sum(r.values()) for r in runs[name]])}", flush=True)


if __name__ == "__main__":
    main()
