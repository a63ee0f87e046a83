"""HTTP routes: parse, call the service on `app.state`, return JSON or SSE. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types.responses import Response as Response_
from openai.types.responses import ResponseStreamEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from l2s.cards import read_card
from server.budgets import as_budget, effort_budget
from server.errors import APIError, sse_error
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChunk,
    ErrorResponse,
    event_schemas,
    now,
)
from server.responses import ResponsesRequest, closing_event, response_events, response_object
from server.service import CLOSING

router = APIRouter()
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}
STREAM_EVENTS = {"ChatCompletionStreamChunk": ChatCompletionStreamChunk, "ResponseStreamEvent": ResponseStreamEvent}


def _documented(whole: type, event: str) -> dict:
    """`responses=` of a route answering `whole` as JSON, or `event`s (STREAM_EVENTS) as server-sent events."""
    stream = {"text/event-stream": {"schema": {"$ref": f"#/components/schemas/{event}"}}}
    return {200: {"model": whole, "content": stream}, **ERRORS}


def document_stream_events(app) -> None:
    """Add the stream events' schemas to the app's /openapi.json (FastAPI documents only JSON bodies)."""
    make_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            make_schema()["components"]["schemas"].update(event_schemas(STREAM_EVENTS))
        return app.openapi_schema

    app.openapi = openapi


SHUT_DOWN = APIError(503, "the server shut down before this request finished", code="shutting_down", retry_after=5)


@router.get("/health")
async def health(request: Request) -> Response:
    service = request.app.state.service
    variants = service.engine_states()  # ready, loading, restarting or dead, per variant
    if service.draining:
        return JSONResponse({"status": "shutting_down", "variants": variants}, status_code=503)
    if any(state in ("dead", "restarting") for state in variants.values()):
        return JSONResponse({"status": "engine_dead", "variants": variants}, status_code=503)
    if not service.ready:
        return JSONResponse({"status": "loading", "variants": variants}, status_code=503)
    return JSONResponse({"status": "ok", "variants": variants})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    service = request.app.state.service
    calibration = service.calibration.source.get("variants", {}) if service.calibration else {}
    data = []
    for name, engine in service.engines.items():
        card = read_card(engine.variant.path) or {}
        data.append(
            {
                "id": name,
                "object": "model",
                "created": now(),
                "owned_by": "long2short",
                # vLLM's convention: a LoRA adapter's parent is the model whose engine serves it
                "parent": engine.host.name if engine.host is not engine else None,
                "max_model_len": engine.max_model_len,
                # long2short's own fields: what a budget or an effort means on this variant
                "max_thinking_tokens": as_budget(engine.variant.max_thinking_tokens),
                "efforts": {
                    effort: effort_budget(engine.variant, effort, service.calibration)
                    for effort in ("none", "low", "medium", "high")
                },
                "card": {key: card.get(key) for key in ("role", "method", "parents", "evaluation", "recipe_hash")},
                "calibration": calibration.get(name),
            }
        )
    data.append(
        {
            "id": "auto",
            "object": "model",
            "created": now(),
            "owned_by": "long2short",
            "card": {"role": "router", "method": "auto"},
        }
    )
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", responses=_documented(ChatCompletionResponse, "ChatCompletionStreamChunk"))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    service = request.app.state.service
    plan = await service.plan(body)
    if body.stream:
        events = service.stream(body, plan)
        # A stream the server never starts (its client left first) never runs its cleanup: when it is dropped,
        # the service gives its slots back and counts a client that left.
        weakref.finalize(events, service.abandoned, plan)
        ending = sse_error(SHUT_DOWN) + "data: [DONE]\n\n"
        return _event_stream(_until_disconnected(request, events, service, lambda _sent: ending))
    return JSONResponse(await _unless_disconnected(request, service.complete(body, plan), service))


@router.post("/v1/responses", responses=_documented(Response_, "ResponseStreamEvent"))
async def responses(body: ResponsesRequest, request: Request) -> Response:
    """OpenAI's Responses API over the same variants, budgets and efforts (server/responses.py)."""
    service = request.app.state.service
    try:
        chat = body.to_chat()
    except APIError:
        service.count_refusal(400, body.model)
        raise
    plan = await service.plan(chat)
    if body.stream:
        events = response_events(service, body, plan)
        weakref.finalize(events, service.abandoned, plan)
        ending = functools.partial(closing_event, SHUT_DOWN)  # numbered after the events sent
        return _event_stream(_until_disconnected(request, events, service, ending))
    completion = await _unless_disconnected(request, service.complete(chat, plan), service)
    return JSONResponse(response_object(body, plan, completion))


def _event_stream(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _until_disconnected(request: Request, events, service, ending: Callable[[int], str]):
    """Pass SSE events on; when the client goes away, cancel the generation (which aborts it in the engine).

    Starlette stops pulling from a stream whose client left but never closes it, and closing an async generator
    from another task races with it. So the events are produced by a task of our own into a queue, and a
    watcher that sees `http.disconnect` cancels that task: cancellation always reaches the engine's generator,
    whose cleanup aborts the request and frees its slot. `ending(events sent so far)` is what ends a stream that
    the server's shutdown grace cut short."""
    queue: asyncio.Queue = asyncio.Queue()
    sent = 0  # SSE events passed on (each ends with a blank line)
    finished = object()

    async def produce() -> None:
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    queue.put_nowait(event)
        finally:
            queue.put_nowait(finished)

    async def cancel_on_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        producer.cancel()

    producer = asyncio.create_task(produce())
    watcher = asyncio.create_task(cancel_on_disconnect())
    service.open_streams.add(queue)
    try:
        while True:
            # Everything queued goes out in one write: under load, events pile up while the last write is sent.
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            if CLOSING in batch:  # the shutdown grace is over: end the stream properly (with `ending`), now
                batch.remove(CLOSING)
                if finished not in batch:  # (unless it has just ended by itself)
                    producer.cancel()
                    yield "".join(batch) + ending(sent + sum(event.count("\n\n") for event in batch))
                    return
            ended = batch[-1] is finished  # always last: the producer puts it as it ends
            if ended:
                batch.pop()
            if batch:
                sent += sum(event.count("\n\n") for event in batch)
                yield "".join(batch)
            if ended:
                return
    finally:
        service.open_streams.discard(queue)
        watcher.cancel()
        if not producer.cancelling():  # cancelled once already: a second cancel could cut vLLM's abort short
            producer.cancel()


async def _unless_disconnected(request: Request, work, service):
    """Run `work`, cancelling it (and so aborting the generation in the engine) if the client goes away, or if
    the server's shutdown grace runs out first (then the client gets a 503)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        if service.closing:
            task.cancel()
            raise SHUT_DOWN
        if await request.is_disconnected():
            task.cancel()
            raise APIError(499, "client closed the request", code="client_closed")
