"""One pipeline per endpoint, even though receiver workers share their ports with SO_REUSEPORT.

SO_REUSEPORT lets any process of the same user join a port's listening group, and the kernel
then spreads new connections over every member: a second pipeline started on the same ports
came up without error and took 57 % of the traffic.  Before its workers bind, the pipeline
process claims each endpoint in two steps, and fails with EADDRINUSE naming the endpoint:

1. a lock held for the receiver's lifetime: an abstract Unix socket named after the endpoint
   (Linux).  Binding it is atomic, the kernel drops it when the process dies (kill -9 too), and it
   lives in the network namespace, as the port does.  Without it two pipelines starting at the
   same moment could both pass step 2 before either's workers listen.
2. a probe bind, never listening, with SO_REUSEADDR (TIME_WAIT leftovers of a previous run do not
   count) and without SO_REUSEPORT: the kernel refuses it while anyone listens on the address,
   a reuseport group (another pipeline's workers) included, and whatever the program.

Holding a bound socket instead of the lock does not work: the workers' own reuseport binds
must coexist with it, so another pipeline's would too.
"""

from __future__ import annotations

import errno
import socket
import sys

from agent_sre.pipeline.component.httpserver import split_endpoint


class EndpointInUse(OSError):
    def __init__(self, endpoint: str, detail: str):
        super().__init__(errno.EADDRINUSE, f"cannot listen on {endpoint}: address in use ({detail})")


def _lock(endpoint: str) -> socket.socket | None:
    if not sys.platform.startswith("linux"):
        return None  # no abstract sockets: the probe alone guards
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0agent-sre-otlp-endpoint {endpoint}")
    except OSError:
        lock.close()
        raise EndpointInUse(endpoint, "another agent-sre pipeline is serving it") from None
    return lock


def probe_endpoint(endpoint: str) -> None:
    """EndpointInUse when anyone listens on ``endpoint``; other bind errors but an absent address
    (family) as OSError too."""
    host, port = split_endpoint(endpoint)
    for family, type_, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):
        with socket.socket(family, type_, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise EndpointInUse(endpoint, "another process listens there") from None
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise OSError(exc.errno, f"cannot listen on {endpoint}: {exc.strerror}") from None


class EndpointClaim:
    """The endpoints this pipeline's workers will serve, held until ``release``."""

    def __init__(self, endpoints: list[str]):
        self._locks: list[socket.socket] = []
        try:
            for endpoint in dict.fromkeys(endpoints):
                lock = _lock(endpoint)
                if lock is not None:
                    self._locks.append(lock)
                probe_endpoint(endpoint)
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        for lock in self._locks:
            lock.close()
        self._locks.clear()
