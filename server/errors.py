"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status codes the
official `openai` client maps to its exception classes. Messages are bounded and carry no paths or traces."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.protocol import UnsupportedParameter

GENERATION_PATHS = {"/v1/chat/completions", "/v1/responses"}  # whose refusals count in l2s_requests_total

logger = logging.getLogger("l2s.server")

MAX_MESSAGE_CHARS = 500

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after


def body_too_large(limit: int) -> APIError:
    """A request body over the server's limit (server/middleware.py answers it)."""
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message[:MAX_MESSAGE_CHARS],
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(error: APIError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return JSONResponse(error_body(error.status, error.message, error.code, error.param), error.status, headers)


def sse_error(error: APIError) -> str:
    return f"data: {json.dumps(error_body(error.status, error.message, error.code, error.param))}\n\n"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request"))
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path in GENERATION_PATHS:  # counted under the variant the body named, if it names one
            model = exc.body.get("model") if isinstance(exc.body, dict) else None
            request.app.state.service.count_refusal(400, model)
        cause = (exc.errors()[0].get("ctx") or {}).get("error") if exc.errors() else None
        if isinstance(cause, UnsupportedParameter):
            return error_response(APIError(400, str(cause), code="unsupported_parameter", param=cause.name))
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, code="invalid_request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return error_response(APIError(status, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(APIError(500, "internal server error", code="internal_error"))
