"""How ``influence serve`` runs uvicorn: its keep-alive, and a total deadline for a request's headers
(the one HTTP edge that ASGI middleware, ``service.middleware``, cannot reach: headers are parsed before
the app is called)."""

from __future__ import annotations

import asyncio

from service.settings import Settings


def header_deadline_protocol(deadline_s: float):
    """uvicorn's h11 protocol with a total deadline for a request's headers: the clock starts with the
    request's first byte, and a client whose request line and headers are not complete ``deadline_s``
    later is disconnected. uvicorn has none (its keep-alive timer runs only between requests), so headers
    trickled a byte at a time would hold a connection for ever; ASGI middleware runs too late to help."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def data_received(self, data: bytes) -> None:
            waiting = self.conn.their_state is h11.IDLE
            if waiting and self._header_timer is None:
                self._header_timer = self.loop.call_later(deadline_s, self._headers_late)
            super().data_received(data)
            if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
                self._header_timer.cancel()  # the headers are in: the body has its own deadline
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.warning("request headers took more than %g s: connection closed", deadline_s)
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


def uvicorn_options(settings: Settings) -> dict:
    """What ``influence serve`` (and the tests' servers) give uvicorn: the keep-alive and the header
    deadline."""
    return {
        "timeout_keep_alive": settings.keep_alive_s,
        "http": header_deadline_protocol(settings.header_deadline_s),
    }
