"""The dashboard's safety rules: loopback unless a login is required, HTTP basic
auth, a Host check against DNS rebinding, and CSRF tokens on every POST (a random
cookie, and in each form an HMAC of it under a per-process key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ..errors import ConfigurationError

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "Credentials",
    "Guard",
    "Security",
    "is_loopback",
    "parse_auth",
]

CSRF_COOKIE = "rw_csrf"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 1 << 20
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def parse_auth(value: str) -> Credentials:
    """`user:password` as given to `--auth`; raises `ConfigurationError`."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError("--auth must look like user:password, both non-empty")
    return Credentials(user, password)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the dashboard on this machine."""
    if host.strip("[]") in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Security:
    """The per-process secrets and the checks that use them."""

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self._key = secrets.token_bytes(32)

    def authorized(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            return False
        wanted = f"{self.credentials.user}:{self.credentials.password}".encode()
        return hmac.compare_digest(given, wanted)

    def new_cookie(self) -> str:
        return secrets.token_urlsafe(24)

    def token_for(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    async def form(self, request: Request) -> dict[str, list[str]]:
        """The POSTed form, after its CSRF token was checked (403 otherwise)."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        given = (form.get(CSRF_FIELD) or [""])[0]
        if not cookie or not hmac.compare_digest(given, self.token_for(cookie)):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return form


class Guard(BaseHTTPMiddleware):
    """Asks for the login when one is set; without one, answers only requests
    addressed to a loopback name (a page elsewhere cannot rebind its DNS to us)."""

    def __init__(self, app: object, *, security: Security) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.security = security

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.security.credentials is None:
            host = request.headers.get("host", "").rsplit(":", 1)[0]
            if not is_loopback(host):
                return PlainTextResponse("this dashboard answers on localhost only", 421)
        elif not self.security.authorized(request.headers.get("authorization")):
            return PlainTextResponse(
                "login required",
                401,
                headers={"WWW-Authenticate": 'Basic realm="rabbitworker", charset="UTF-8"'},
            )
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
