"""Connections that come back after libzmq gave up on them.

libzmq retries a connection that failed or closed, but drops for good one whose peer broke the
ZeroMQ protocol: a program squatting the port that answers with anything else (a banner, junk), a
publisher with another CURVE key, a server that refused this host's key (libzmq ends the session
on a protocol error and never reconnects it, zeromq/libzmq#4196). A subscriber or clock client
that reached such a squatter would stay deaf after it left, even once the rightful publisher binds.

`Connections` connects a socket to its endpoints and watches its monitor events: an endpoint
disconnected without a retry announced within RETRY_AFTER_S is disconnected and connected again
(with its CURVE server key), every RETRY_AFTER_S for as long as it keeps failing. Only network
endpoints are watched: ipc stays in the run directory, which no other user can reach.
"""

from __future__ import annotations

import logging
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from perception.security import CurveClient, is_network, plain_first

log = logging.getLogger(__name__)

RETRY_AFTER_S = 0.5  # libzmq announces its own retry at once; none by then means it gave up
_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_SUCCEEDED


class Connections:
    """A connecting socket's endpoints, connected again when libzmq drops one for good; call
    `check()` from the socket's own thread now and then (a node's loop, a clock round)."""

    def __init__(self, socket: zmq.Socket, endpoints: list[str], curve: CurveClient | None = None) -> None:
        self.socket = socket
        self._curve = curve
        self._watched = {e for e in endpoints if is_network(e)}
        self._monitor = socket.get_monitor_socket(_EVENTS) if self._watched else None
        self._dropped: dict[str, float] = {}  # endpoint -> when libzmq dropped it (time.monotonic)
        self._failing: set[str] = set()  # endpoints dropped since their last good handshake: said once
        for endpoint in plain_first(endpoints, curve):
            self._connect(endpoint)

    def _connect(self, endpoint: str) -> None:
        if self._curve is not None:
            self._curve.apply(self.socket, endpoint)
        self.socket.connect(endpoint)

    def check(self) -> None:
        """Read the socket's events; connect again the endpoints libzmq gave up on. Never blocks."""
        if self._monitor is None:
            return
        now = time.monotonic()
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())
            endpoint = event["endpoint"].decode(errors="replace")
            if endpoint not in self._watched:
                continue
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._dropped.setdefault(endpoint, now)
            else:
                self._dropped.pop(endpoint, None)  # libzmq retries it, or it is connected
                if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and endpoint in self._failing:
                    self._failing.discard(endpoint)
                    log.info("%s: connected again", endpoint)
        for endpoint, since in list(self._dropped.items()):
            if now - since >= RETRY_AFTER_S:
                self._reconnect(endpoint)

    def _reconnect(self, endpoint: str) -> None:
        del self._dropped[endpoint]
        keyed = self._curve is not None and endpoint in self._curve.server_keys
        if self._curve is not None and self._curve.server_keys and not keyed:
            # Once CURVE is set on a socket every connect uses it: a plain endpoint cannot be redone.
            log.warning("%s: dropped by ZeroMQ and cannot be connected again plain on a CURVE socket", endpoint)
            return
        if endpoint not in self._failing:
            self._failing.add(endpoint)
            log.warning("%s: the peer there broke the ZeroMQ protocol or refused the handshake (another program "
                        "on the port, or the wrong key): connecting again every %.1f s", endpoint, RETRY_AFTER_S)
        try:
            self.socket.disconnect(endpoint)  # libzmq keeps the dead endpoint: a second connect would be ignored
        except zmq.ZMQError:
            pass
        self._connect(endpoint)

    def close(self) -> None:
        """Stop watching; before the socket is closed."""
        if self._monitor is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:  # the context is ending: closing the sockets is what still matters
                pass
            self._monitor.close(0)
            self._monitor = None
