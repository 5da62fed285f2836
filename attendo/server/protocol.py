"""The connection guards uvicorn lacks: deadlines for a request's line and headers and for an
unread body, and a cap on open connections (:class:`GuardedH11Protocol`), configured from
:class:`~attendo.server.limits.ServeLimits` by :func:`server_config`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import h11
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import ServeLimits

log = logging.getLogger("attendo")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with the guards uvicorn lacks.

    uvicorn times out only an idle kept-alive connection (``timeout_keep_alive``, armed after a
    response, and disarmed by any byte that arrives); a connection that never completes its
    request line and headers is held for ever (slow loris), and so is one that, answered
    already, goes on sending a body nobody reads a byte at a time. ``limit_concurrency``
    answers 503 only once a request's headers have arrived, so it bounds neither. Here:

    - a request's line and headers must arrive within ``header_timeout_s`` of its first byte
      (of the connection being opened, for the first request); after that the connection is
      closed, with a 408 when part of a request had arrived;
    - the rest of a body that was answered without being read (a route that takes none) must
      arrive within ``read_timeout_s`` of its next byte, or the connection is closed (a body
      the app reads has that deadline in the app: a 408);
    - with ``max_connections`` open, one more is answered 503 at once and closed.

    Made per server by :func:`server_config`, which sets the class attributes from
    :class:`ServeLimits`.
    """

    header_timeout_s: float = ServeLimits.header_timeout_s
    read_timeout_s: float = ServeLimits.read_timeout_s
    max_connections: int = ServeLimits.max_connections

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._on_deadline: Callable[[], None] | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("%d connections open (max_connections); refused one from %s",
                        len(self.connections) - 1, self.client)
            self._refuse(503, "Service Unavailable",
                         f"busy: {self.max_connections} connections are open, the limit "
                         "(max_connections, --max-connections); try again shortly")
            return
        self._arm(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.IDLE:  # part of a request: its deadline runs from here on
            self._arm(self.header_timeout_s, self._headers_too_slow)
        elif state is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete:
            self._arm(self.read_timeout_s, self._unread_body_too_slow)
        else:  # headers in, and the app reads the body (or the request is over)
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        """One deadline per stage of a request, not one per chunk: armed once, kept."""
        if self._on_deadline == callback:
            return
        self._disarm()
        self._deadline, self._on_deadline = self.loop.call_later(seconds, callback), callback

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._on_deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = self._on_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.debug("closed a connection from %s: no complete request headers within %g s",
                  self.client, self.header_timeout_s)
        if self.conn.trailing_data[0]:  # a request had begun: say why it is cut off
            self._refuse(408, "Request Timeout",
                         f"the request line and headers did not arrive within the "
                         f"{self.header_timeout_s:g} s limit (header_timeout_s, "
                         "--header-timeout)")
        else:
            self.transport.close()

    def _unread_body_too_slow(self) -> None:
        self._deadline = self._on_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            log.debug("closed a connection from %s: the rest of an answered request's body "
                      "did not arrive within %g s", self.client, self.read_timeout_s)
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``{"error": message}`` and close, outside h11's request cycle (no request
        was read)."""
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info"):
    """The uvicorn configuration of ``attendo serve`` for an app of :func:`create_app`: the
    h11 protocol with the deadlines and connection cap of the app's limits
    (:class:`GuardedH11Protocol`), and their keep-alive time."""
    import uvicorn

    limits: ServeLimits = app.state.limits
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": limits.header_timeout_s, "read_timeout_s": limits.read_timeout_s,
        "max_connections": limits.max_connections})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          ws="none", timeout_keep_alive=limits.keep_alive_s)
