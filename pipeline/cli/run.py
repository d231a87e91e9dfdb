"""``agent-sre run``: run the pipeline until SIGINT or SIGTERM, then drain and stop."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import time

from agent_sre.pipeline.cli.common import EXIT_RUNTIME, load

# The batch flusher acknowledges exports; the threads beside it (commit callbacks, SLO evaluation, the
# metrics' fold) run Python for milliseconds at a time, and the flusher, giving the GIL up at every Arrow
# call, waited up to Python's 5 ms switch interval to get it back.  Measured (bench/flush_latency.py,
# 1,024-span flushes at 25k spans/s): flush p99 ~37 ms at 5 ms, ~31 ms at 0.5 ms, the same CPU per span.
SWITCH_INTERVAL_S = 0.0005


def _setup_logging(level: str = "info") -> None:
    lvl = {"warn": "WARNING"}.get(level.lower(), level.upper())
    logging.basicConfig(level=lvl, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.pdata.memory import arrow_without_pandas, use_system_allocator

    use_system_allocator()  # first: Arrow's first allocation starts the pool it then keeps
    arrow_without_pandas()  # before the imports below: their first pa.array would load it
    from agent_sre.pipeline.service import Service
    from agent_sre.pipeline.service.config import install_secret_log_filter

    cfg = load(args.config)
    assert cfg.service is not None
    _setup_logging(cfg.service.telemetry.logs.level)
    install_secret_log_filter(cfg)  # the config's secrets never reach the log
    service = Service(cfg)
    # A plain flag, not threading.Event: a handler runs between any two bytecodes of the main thread,
    # also inside Event.wait() while it holds the Event's lock, and Event.set() there deadlocks
    # (seen: SIGTERM during the wait left `agent-sre run` hanging for ever).
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        service.start()
    except Exception as exc:  # noqa: BLE001 - a start failure is reported, not a traceback
        logging.getLogger("agent_sre").debug("start failed", exc_info=True)
        print(f"agent-sre: cannot start: {cfg.mask(str(exc))}", file=sys.stderr)
        return EXIT_RUNTIME
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # What start-up made (modules, config, plans: ~120k objects) lives as long as the process: out of
    # the collector's reach, a full collection no longer walks it.  Measured (bench/flush_latency.py):
    # full collections paused every thread, the flusher's acknowledgements too, for 84-97 ms; 6-14 ms frozen.
    gc.freeze()
    print(f"agent-sre running ({cfg.source}); Ctrl-C to stop", flush=True)
    for line in service.describe():
        print(f"  {cfg.mask(str(line))}", flush=True)
    while not stopping:
        time.sleep(0.2)  # a signal interrupts the sleep; the flag ends the loop
    print("agent-sre: shutting down (draining batches)", file=sys.stderr, flush=True)
    service.shutdown()
    return 0
