"""A TCP relay that lets a validator's challenge leave from another source address (SPEC N2).

A miner sees the source address of every request. If a validator's challenges came from
its node's address — public in every peer table — a miner could be honest to that address
only (``runtime.server`` ``--misbehave honest-to:IP,...`` does exactly that). So a
validator sends each challenge through a ``Relay``: a loopback listener whose outgoing
connection to the miner is bound to a source address drawn from the validator's private
pool (``--challenge-from``). In a deployment those addresses are hosts, VPN exits or
gateways not linked to the validator's node; in the tests they are 127.0.x.y addresses.

The relay copies bytes both ways unchanged (gRPC's HTTP/2 passes through as is); it holds
at most ``max_connections`` connections, and every thread it starts ends when either side
closes or ``close()`` is called.
"""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger("network.relay")
BUFFER = 1 << 16


class Relay:
    """Listen on ``127.0.0.1:PORT``; forward each connection to ``target`` from ``source``."""

    def __init__(self, target: str, source: str, *, max_connections: int = 8) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.source = source
        self.max_connections = max_connections
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(max_connections)
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="relay-accept")
        self._accept.start()

    @property
    def address(self) -> str:
        """Where the validator's client connects instead of the miner."""
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                inner, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._sockets) >= 2 * self.max_connections
            if full:
                inner.close()
                continue
            try:
                outer = socket.create_connection(self.target, timeout=10,
                                                 source_address=(self.source, 0))
                outer.settimeout(None)
            except OSError as e:
                log.info("relay from %s to %s:%d failed: %s", self.source, *self.target, e)
                inner.close()
                continue
            with self._lock:
                self._sockets += [inner, outer]
            for a, b in ((inner, outer), (outer, inner)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True,
                                     name="relay-pump")
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy until either side closes; then close both so the other pump ends too."""
        try:
            while data := src.recv(BUFFER):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting, close every connection, wait (bounded) for the threads."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            socks, self._sockets = self._sockets, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._accept.join(2)
        for t in self._threads:
            t.join(2)
