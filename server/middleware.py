"""The server's gates, as plain ASGI middleware: bound the request body, refuse new work while draining, and
check the API key.

Plain ASGI rather than `@app.middleware("http")`: Starlette's `BaseHTTPMiddleware` wraps every response body
in a memory stream and a task group, a cost paid on each chunk of every streamed completion. These gates look
at the request only, so they pass a streaming response through untouched.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import GENERATION_PATHS, APIError, body_too_large, error_response

OPEN_PATHS = {"/", "/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
OPEN_PREFIXES = ("/playground",)  # a static page: the key it asks for guards the API calls it makes


class RefuseWhileDraining:
    """503 on every `/v1/` request once the server has begun shutting down."""

    def __init__(self, app: ASGIApp, service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.service.draining and scope["path"].startswith("/v1/"):
            error = APIError(503, "the server is shutting down", code="shutting_down", retry_after=5)
            return await _refuse(scope, receive, send, error, self.service.count_refusal)
        await self.app(scope, receive, send)


class RequireAPIKey:
    """401 unless `Authorization: Bearer <key>`, on every path but the open ones (health, metrics, docs, the
    playground page)."""

    def __init__(self, app: ASGIApp, api_key: str, count: Callable[[int], None]) -> None:
        self.app, self.expected, self.count = app, f"Bearer {api_key}".encode(), count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):  # constant time
                error = APIError(401, "Incorrect API key provided", code="invalid_api_key")
                return await _refuse(scope, receive, send, error, self.count)
        await self.app(scope, receive, send)


class LimitBody:
    """413 for a body over `max_bytes`: at once when its Content-Length says so, and otherwise as soon as the
    bytes read pass the limit (a chunked upload), so a huge body is never held in memory whole."""

    def __init__(self, app: ASGIApp, max_bytes: int, count: Callable[[int], None]) -> None:
        self.app, self.max_bytes, self.count = app, max_bytes, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse(scope, receive, send, body_too_large(self.max_bytes), self.count)
        received, refused = 0, False

        async def limited_receive() -> dict:
            # Past the limit: answer 413 here, and tell the app its client left, so it stops reading.
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await _refuse(scope, receive, send, body_too_large(self.max_bytes), self.count)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: dict) -> None:
            if not refused:  # after a 413, whatever the app answers goes nowhere
                await send(message)

        await self.app(scope, limited_receive, send_unless_refused)


async def _refuse(scope: Scope, receive: Receive, send: Send, error: APIError, count: Callable[[int], None]) -> None:
    """Answer `error`, counting it in the requests metric when it refused a generation request."""
    if scope.get("path") in GENERATION_PATHS:
        count(error.status)
    await error_response(error)(scope, receive, send)
