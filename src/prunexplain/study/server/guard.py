"""ASGI middleware in front of every route: security headers, a body-size limit, an Origin check.

Plain ASGI classes rather than Starlette's `@app.middleware("http")`: with that wrapper the server
spent 1.5x the CPU per answer in the load benchmark.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from prunexplain.study.server.security import HEADERS

log = logging.getLogger(__name__)

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


async def _refuse(send, status: int, text: str) -> None:
    """A short plain-text answer, with the security headers (this runs outside SecurityHeaders)."""
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in HEADERS.items())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds security.HEADERS to every response that does not set them itself. A response that sets
    its own Content-Security-Policy (pages in MTurk's frame, security.FRAMED_POLICY) says with its
    `frame-ancestors` who may frame it, so it gets no X-Frame-Options: DENY would forbid every frame."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                if b"content-security-policy" in present:
                    present.add(b"x-frame-options")
                extra = [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413 before they are read: at once when
    Content-Length says so, else as soon as the streamed chunks add up to more. Every form and
    answer of the study is well under a kilobyte; without this a 100 MB body went into memory and a
    16 MB form held every other request for seconds."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:  # the HTTP server delivers no more than it declares
            if not declared.isdigit() or int(declared) > self.limit:
                return await _refuse(send, 413, f"request body over {self.limit} bytes")
            return await self.app(scope, receive, send)
        received, refused = 0, False

        async def counted():
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit and not refused:
                refused = True
                log.warning("refused a streamed body over %d bytes from %s", self.limit, scope.get("client"))
                await _refuse(send, 413, f"request body over {self.limit} bytes")
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:  # the app failing on its cut-off body is expected; anything else is not
                raise


class OriginCheck:
    """State-changing requests that a browser marks as coming from another site get 403.

    A form on another site that posts a consent or an answer with the participant's cookies is
    refused (SameSite=Lax cookies already stop most of that; this also covers old browsers and
    sibling subdomains). Browsers say where a request comes from in `Sec-Fetch-Site`, which no page
    can set: only `same-origin` passes. Browsers without it are judged by `Origin`, whose host must
    be the Host the request was sent to (or the X-Forwarded-Host a proxy adds, which a form post
    cannot set either); the scheme is not compared, since behind an HTTPS proxy the server itself
    sees http. Origin alone cannot decide for current browsers: under our `Referrer-Policy:
    no-referrer` they send `Origin: null` even for the study's own forms. Requests with neither
    header (scripts, the load benchmark) are not from a browser page and pass.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in _UNSAFE and not _same_origin(dict(scope["headers"])):
            log.warning("refused a cross-site %s to %s", scope["method"], scope["path"])
            return await _refuse(send, 403, "cross-site request refused")
        return await self.app(scope, receive, send)


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site == b"same-origin"
    origin = headers.get(b"origin")
    if origin is None:
        return True
    hosts = (headers.get(b"host", b""), headers.get(b"x-forwarded-host", b""))
    return any(_same_host(origin, host) for host in hosts if host)


def _same_host(origin: bytes, host: bytes) -> bool:
    """Origin `scheme://host[:port]` names `host` (as the Host header gives it); 'null' never does."""
    try:
        netloc = urlsplit(origin.decode("latin-1")).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.decode("latin-1").lower()
