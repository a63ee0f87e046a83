"""`build_app(config)`: the FastAPI application, its engines started in the background at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal

from fastapi import FastAPI, Request

from server.budgets import Calibration
from server.config import ServerConfig
from server.errors import APIError, error_response, install_error_handlers
from server.routes import router
from server.service import ChatService

logger = logging.getLogger("l2s.server")

OPEN_PATHS = {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def build_app(config: ServerConfig, calibration: Calibration | None = None, api_key: str | None = None) -> FastAPI:
    service = ChatService(config, calibration)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Engines load in the background: /health answers 503 until every one is ready.
        loading = asyncio.create_task(service.start())
        loading.add_done_callback(_log_failure)
        try:
            yield
        finally:
            service.draining = True
            loading.cancel()
            service.shutdown()

    app = FastAPI(
        title="long2short",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions over long- and short-thinking variants.",
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(router)

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def _authenticate(request: Request, call_next):
            if request.url.path not in OPEN_PATHS:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):  # constant time
                    return error_response(APIError(401, "Incorrect API key provided", code="invalid_api_key"))
            return await call_next(request)

    @app.middleware("http")
    async def _refuse_while_draining(request: Request, call_next):
        if service.draining and request.url.path.startswith("/v1/"):
            return error_response(APIError(503, "the server is shutting down", code="shutting_down", retry_after=5))
        return await call_next(request)

    return app


def _log_failure(task: asyncio.Task) -> None:
    """An engine that cannot start leaves nothing to serve: say why and stop, rather than answer 503 forever."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("engine start-up failed: %s", task.exception())
        os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["build_app"]
