"""`build_app(config)`: the FastAPI application, its engines started in the background at start-up."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from server.budgets import Calibration
from server.config import ServerConfig
from server.engine import VariantEngine
from server.errors import install_error_handlers
from server.middleware import LimitBody, RefuseWhileDraining, RequireAPIKey
from server.routes import document_stream_events, router
from server.service import ChatService

PLAYGROUND = Path(__file__).parent / "playground"


def build_app(
    config: ServerConfig,
    calibration: Calibration | None = None,
    api_key: str | None = None,
    engines: dict[str, VariantEngine] | None = None,
) -> FastAPI:
    """`engines`: see `ChatService` (default: a vLLM engine per variant, in this process)."""
    service = ChatService(config, calibration, engines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Engines load in the background: /health answers 503 until every one is ready.
        loading = asyncio.create_task(service.start())  # then watches the engines until shutdown
        loading.add_done_callback(lambda task: _exit_on_failure(task, service))
        try:
            yield
        finally:
            service.draining = True
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)  # let it note an engine still being built
            service.shutdown()  # which waits for such a build and stops its engine

    app = FastAPI(
        title="long2short",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions over long- and short-thinking variants.",
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(router)
    document_stream_events(app)
    # The playground: a static page that uses the public API like any client (server/playground/).
    app.mount("/playground", StaticFiles(directory=PLAYGROUND, html=True), name="playground")
    app.add_api_route("/", lambda: RedirectResponse("/playground/"), include_in_schema=False)

    # Added last, runs first: a body too large is refused first, then a draining server refuses before it
    # checks keys.
    if api_key:
        app.add_middleware(RequireAPIKey, api_key=api_key, count=service.count_refusal)
    app.add_middleware(RefuseWhileDraining, service=service)
    app.add_middleware(LimitBody, max_bytes=config.max_body_bytes, count=service.count_refusal)
    return app


def _exit_on_failure(task: asyncio.Task, service: ChatService) -> None:
    """An engine that cannot start leaves nothing to serve: say why and exit non-zero, rather than answer 503
    forever."""
    if not task.cancelled() and task.exception() is not None:
        service.exit_failed(f"engine start-up failed: {task.exception()}")


__all__ = ["build_app"]
