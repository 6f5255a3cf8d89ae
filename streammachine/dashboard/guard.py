"""Who may read and who may act on the dashboard, checked before any route runs.

- **Read token** (`STREAMMACHINE_DASHBOARD_TOKEN`): when set, every route but `/healthz` needs
  `Authorization: Bearer <token>` or `?token=<token>`; the operator token reads too.
- **Host check**: a dashboard without a read token answers only requests whose `Host` is an IP
  address, `localhost`, or a name of the allow-list (`STREAMMACHINE_DASHBOARD_ALLOWED_HOSTS`),
  so a page on another site cannot read it through DNS rebinding (`run_dashboard_server` turns
  it on; an app that mounts the ASGI app itself passes `allowed_hosts` or sets a token).
- **Operator token** (`STREAMMACHINE_DASHBOARD_OPERATOR_TOKEN`): without it the dashboard is
  read-only. Actions (`POST /api/actions/<name>`) need it in the `Authorization` header — never a
  cookie, never `?token=` — a JSON body, and, when the browser sends them, an `Origin` equal to
  the dashboard's own and a `Sec-Fetch-Site` of `same-origin`: a page on another site can
  neither send that header nor read the answer (CSRF).
- Security headers on every response.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import DASHBOARD_OPERATOR_TOKEN_ENV, DASHBOARD_TOKEN_ENV

__all__ = ["JSON", "Guard", "actor_name", "bearer", "check_action_request", "host_allowed"]

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        b"frame-ancestors 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_LOCAL_NAMES = ("localhost",)


class JSON(Response):
    """JSON with `<`, `>` and `&` escaped, so no byte of data can read as markup anywhere."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return text.encode("utf-8")


def bearer(scope: Scope) -> bytes | None:
    """The token of the request's `Authorization: Bearer` header, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return bytes(value[7:].strip())
    return None


def same(given: bytes | None, token: bytes | None) -> bool:
    """Constant-time equality of a given token and a configured one (no token: never)."""
    return bool(given) and token is not None and hmac.compare_digest(given or b"", token)


def host_allowed(host_header: str, allowed: frozenset[str]) -> bool:
    """Whether a `Host` header (with or without a port) names this dashboard: an IP address,
    `localhost`, or a name in `allowed` (lower case).

    Example:
        >>> host_allowed("127.0.0.1:8000", frozenset()), host_allowed("evil.example", frozenset())
        (True, False)
    """
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in _LOCAL_NAMES or host.rstrip(".") in allowed


class Guard:
    """The read-token check, the Host check and the security headers (see the module docstring).

    Args:
        app: the ASGI app.
        token: the read token (None: reads are open).
        operator_token: the operator token, which reads too.
        allowed_hosts: check `Host` against these (see `host_allowed`); None: no check.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        operator_token: str | None = None,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.operator = operator_token.encode() if operator_token else None
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        refusal: Response | None = None
        if self.allowed_hosts is not None:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not host_allowed(host, self.allowed_hosts):
                refusal = PlainTextResponse(
                    "421: this dashboard does not answer for that host name; add it to "
                    "STREAMMACHINE_DASHBOARD_ALLOWED_HOSTS or set a token\n",
                    status_code=421,
                )
        needs_token = self.token is not None and scope["path"] != "/healthz"
        if refusal is None and needs_token and not self._allowed(scope):
            refusal = PlainTextResponse(
                f"401: send Authorization: Bearer <token> (or ?token=) — see "
                f"{DASHBOARD_TOKEN_ENV}\n",
                status_code=401,
                headers={"www-authenticate": 'Bearer realm="streammachine"'},
            )
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _allowed(self, scope: Scope) -> bool:
        given = bearer(scope)
        if given is not None:
            return same(given, self.token) or same(given, self.operator)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        text = query.get("token", [""])[0].encode()
        return same(text, self.token) or same(text, self.operator)


def check_action_request(request: Request, operator_token: str | None) -> Response | None:
    """Why an action request is refused (a response to send), or None when it may go on."""
    if not operator_token:
        return JSON(
            {
                "error": "this dashboard is read-only: set "
                f"{DASHBOARD_OPERATOR_TOKEN_ENV} to allow actions"
            },
            status_code=403,
        )
    if not same(bearer(request.scope), operator_token.encode()):
        return JSON(
            {"error": "actions need the operator token in an Authorization: Bearer header"},
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="streammachine-operator"'},
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return JSON({"error": "send the action's arguments as application/json"}, 415)
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin != own:
        return JSON({"error": f"cross-site request refused (Origin {origin[:100]})"}, 403)
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return JSON({"error": f"cross-site request refused (Sec-Fetch-Site {site[:40]})"}, 403)
    return None


def actor_name(request: Request) -> str:
    """Who acts, as the audit records it: the operator token from this client address."""
    client = request.client.host if request.client else "unknown"
    return f"operator token from {client}"
