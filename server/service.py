"""The chat service behind the routes: picks the variant, resolves budgets, runs the engine, shapes the
OpenAI response (whole or as server-sent events), and records metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.budgets import Calibration, choose_variant, effective_budget
from server.config import ServerConfig
from server.engine import AdapterEngine, Chunk, GenerationParams, ToolReader, VariantEngine
from server.errors import APIError, sse_error
from server.metrics import ServerMetrics
from server.protocol import ChatCompletionRequest, completion_id, delta, logprobs, message, now, usage

logger = logging.getLogger("l2s.server")
CLOSING = object()  # put in an open stream's queue when the drain's grace is over
WATCH_SECONDS = 0.5  # how often the watchdog looks for dead engines (/health sees a death at once regardless)


@dataclass
class Plan:
    """What one request will run: on which engine, with which prompt and parameters."""

    engine: VariantEngine
    prompt_ids: list[int]
    sampling: Any  # vLLM's SamplingParams, validated when the request was planned
    budget: int | None
    n: int
    thinking_off: bool = False  # the chat template was told not to think: the completion is all content
    tools: ToolReader | None = None  # reads tool calls out of the answers, when the request has tools

    reserved: int = 0  # engine slots (sequences) held for this request until it ends
    finals: list[Chunk | None] = field(init=False)  # each choice's last chunk, once it has come

    def __post_init__(self) -> None:
        self.finals = [None] * self.n

    def release(self) -> None:
        """Give back the engine slots this request reserved (once; every way a request ends calls it)."""
        self.engine.release(self.reserved)
        self.reserved = 0


class ChatService:
    def __init__(
        self,
        config: ServerConfig,
        calibration: Calibration | None = None,
        engines: dict[str, VariantEngine] | None = None,
    ):
        """`engines`: what runs each variant, when not vLLM engines in this process (`l2s serve --ray` passes
        server/remote_engine.py's, one per Ray Serve deployment)."""
        self.config = config
        self.calibration = calibration
        if engines is None:
            full = [variant for variant in config.variants if variant.base is None]
            hosts = {variant.name: VariantEngine(variant, position) for position, variant in enumerate(full)}
            engines = {  # in the config's order; LoRA adapters on their base's engine
                v.name: hosts[v.name] if v.base is None else AdapterEngine(v, hosts[v.base]) for v in config.variants
            }
        self.engines = engines
        self.metrics = ServerMetrics()
        for name, engine in self.engines.items():  # read at scrape time, so they are never stale
            self.metrics.running.labels(name).set_function(lambda engine=engine: engine.running)
            self.metrics.waiting.labels(name).set_function(lambda engine=engine: engine.waiting)
            if engine.live_replicas is not None:
                self.metrics.live_replicas.labels(name).set_function(lambda engine=engine: engine.live_replicas)
        self.draining = False
        self.closing = False  # the drain's grace is over: requests still running are ended
        self.open_streams: set[asyncio.Queue] = set()  # each open stream's event queue (routes.py)
        self.fatal: str | None = None  # why the server is exiting non-zero
        self.on_fatal = lambda: os.kill(os.getpid(), signal.SIGTERM)  # `l2s serve` drains and exits 1 instead

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # one at a time (engines starting together fight for the CPU), adapters after their bases
        for engine in sorted(self.engines.values(), key=lambda engine: engine.host is not engine):
            await engine.start()
        await self.watch_engines()

    async def watch_engines(self) -> None:
        """Notice a dead engine (OOM, segfault, kill -9) and restart it in place, up to `max_engine_restarts`
        times per variant; past that, exit non-zero so the process supervisor (systemd, Kubernetes) restarts the
        whole server. Meanwhile /health says 503 naming the variant, and its requests get 503 + Retry-After;
        the other variants keep serving."""
        while not self.draining:
            await asyncio.sleep(WATCH_SECONDS)
            for engine in self.engines.values():
                await engine.refresh()  # (a Ray deployment's live replicas; nothing for an engine in this process)
                if engine.host is engine and engine.dead and not self.draining:  # (an adapter's: its base's)
                    await self._recover(engine)

    async def _recover(self, engine: VariantEngine) -> None:
        self.metrics.engine_deaths.labels(engine.name).inc()
        logger.error("variant %s: its vLLM engine died", engine.name)
        await asyncio.to_thread(engine.shutdown)  # reap what is left of it: no process outlives its engine
        while engine.restarts < self.config.max_engine_restarts and not self.draining:
            engine.restarts += 1
            self.metrics.engine_restarts.labels(engine.name).inc()
            logger.warning(
                "variant %s: restarting its engine (%d of %d)",
                engine.name,
                engine.restarts,
                self.config.max_engine_restarts,
            )
            engine.restarting = True
            try:
                await engine.start()
                return
            except Exception as error:
                self.metrics.engine_deaths.labels(engine.name).inc()
                logger.error("variant %s: the restart failed: %s", engine.name, error)
                await asyncio.to_thread(engine.shutdown)
            finally:
                engine.restarting = False
        engine.failed = True
        self.exit_failed(f"variant {engine.name}: its engine died with no restart left")

    async def drain(self, grace: float) -> None:
        """On SIGTERM: new requests already get 503 (`draining`); wait up to `grace` seconds for the ones in flight,
        then end those still running — a stream with an error event and `[DONE]`, a whole completion with a 503 —
        which aborts their generations."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not self.in_flight:
            return
        logger.warning("shutdown grace over: ending %d sequences still in flight", self.in_flight)
        self.closing = True
        for queue in self.open_streams:
            queue.put_nowait(CLOSING)
        deadline = loop.time() + 5
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def exit_failed(self, reason: str) -> None:
        """Stop serving and exit non-zero (in-flight requests of the other variants are drained first)."""
        logger.error("%s: shutting down", reason)
        self.fatal = reason
        self.on_fatal()

    @property
    def ready(self) -> bool:
        return bool(self.engines) and all(engine.ready for engine in self.engines.values())

    def engine_states(self) -> dict[str, str]:
        return {name: engine.status for name, engine in self.engines.items()}

    @property
    def in_flight(self) -> int:
        return sum(engine.in_flight for engine in self.engines.values())

    def shutdown(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()

    # --- planning ----------------------------------------------------------------------------------------------
    async def plan(self, request: ChatCompletionRequest) -> Plan:
        """Admit the request (reserving its `n` sequences on the engine before anything awaits, so a burst cannot
        overshoot the queue bound) and prepare what it will run; every refusal is counted by status."""
        name = request.model
        if name == "auto" and not self.draining:
            name = choose_variant(self.config, request.requested_budget(), request.effort(), self.calibration)
        label = name if name in self.engines else "unknown"  # bounded label values
        try:
            engine = self._admit(name, request)
        except APIError as error:
            self.metrics.requests.labels(label, str(error.status)).inc()
            raise
        try:
            return await self._prepare(engine, request)
        except BaseException as error:
            engine.release(request.n)
            if isinstance(error, APIError):
                self.metrics.requests.labels(label, str(error.status)).inc()
            raise

    def count_refusal(self, status: int, model: object = None) -> None:
        """Count a request refused before it could be planned: invalid (400), too large (413), unauthorised (401),
        or arriving while the server drains (503). Its variant, when the body named a hosted one."""
        label = model if isinstance(model, str) and model in self.engines else "unknown"
        self.metrics.requests.labels(label, str(status)).inc()

    def _admit(self, name: str, request: ChatCompletionRequest) -> VariantEngine:
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down", retry_after=5)
        engine = self.engines.get(name)
        if engine is None:
            raise APIError(
                404, f"The model '{request.model[:100]}' does not exist", code="model_not_found", param="model"
            )
        if not engine.ready:
            if engine.status == "loading":
                raise APIError(503, f"the model '{name}' is still loading", code="not_ready", retry_after=5)
            raise APIError(
                503, f"the engine of '{name}' died and is restarting", code="engine_unavailable", retry_after=10
            )
        if request.n > engine.capacity:  # could never be admitted: retrying would not help
            raise APIError(400, f"n={request.n} is more than '{name}' admits at once ({engine.capacity})", param="n")
        if not engine.reserve(request.n):
            self.metrics.refused.labels(name).inc()
            raise APIError(429, f"too many requests waiting for '{name}'", code="queue_full", retry_after=1)
        return engine

    async def _prepare(self, engine: VariantEngine, request: ChatCompletionRequest) -> Plan:
        variant = engine.variant
        budget = effective_budget(variant, request.requested_budget(), request.effort(), self.calibration)
        template_kwargs = {**variant.chat_template_kwargs, **(request.chat_template_kwargs or {})}
        switch = engine.format.thinking_switch
        if switch and budget == 0 and switch not in template_kwargs:
            template_kwargs[switch] = False  # reasoning_effort "none" / a zero budget: no thinking, by the template
        thinking_off = bool(switch) and template_kwargs.get(switch) is False
        tools = None
        if request.uses_tools():
            if variant.tool_parser is None:
                raise APIError(
                    400,
                    f"'tools' needs a variant with a tool-call parser (tool_parser in the server config); "
                    f"'{engine.name}' has none",
                    code="unsupported_parameter",
                    param="tools",
                )
            template_kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
            try:
                tools = engine.tool_reader(_tool_request(request))
            except ValueError as error:
                raise APIError(400, str(error), code="invalid_parameter", param="tools") from None
        if thinking_off or not engine.format.reasons:
            budget = None  # nothing to cap: the completion holds no reasoning
        messages = [m.for_template() for m in request.messages]
        try:  # off the event loop: a long prompt must not stall every other stream
            prompt_ids = await engine.tokenize(messages, template_kwargs)
        except Exception as error:  # the template itself refused these messages or kwargs
            raise APIError(400, f"the chat template failed: {str(error)[:300]}", code="invalid_parameter") from None
        context = engine.max_model_len
        room = context - len(prompt_ids)
        max_tokens = request.max_output_tokens()
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = max_tokens if max_tokens is not None else 1
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{len(prompt_ids) + asked} tokens ({len(prompt_ids)} in the messages, {asked} in the completion).",
                code="context_length_exceeded",
                param="messages",
            )
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        params = GenerationParams(
            max_tokens=max_tokens if max_tokens is not None else room,
            thinking_token_budget=budget,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=-1 if request.top_k in (None, 0) else request.top_k,
            seed=request.seed,
            stop=stop,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias={int(token): bias for token, bias in (request.logit_bias or {}).items()},
            ignore_eos=request.ignore_eos,
            min_tokens=request.min_tokens,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            logprobs=request.logprobs_wanted(),
            json_schema=_json_schema(request),
            keep_special_tokens=tools is not None,  # tool-call markers are special tokens in many models
        )
        if any(token >= engine.vocab_size for token in params.logit_bias):
            raise APIError(400, f"logit_bias: token ids must be below {engine.vocab_size}", param="logit_bias")
        try:
            sampling = engine.sampling_params(params, request.n)
        except ValueError as error:  # what vLLM itself rejects (its validation errors are ValueErrors)
            raise APIError(400, str(error)[:500], code="invalid_parameter") from None
        return Plan(
            engine=engine,
            prompt_ids=prompt_ids,
            sampling=sampling,
            budget=budget,
            n=request.n,
            thinking_off=thinking_off,
            reserved=request.n,
            tools=tools,
        )

    def abandoned(self, plan: Plan) -> None:
        """A planned request that never reached the engine (its client left first, or the shutdown grace ran
        out): its slots back, and counted. Nothing happens for one that did: it gave them back as it ended."""
        if plan.reserved:
            plan.release()
            self.metrics.requests.labels(plan.engine.name, "503" if self.closing else "499").inc()

    # --- running ------------------------------------------------------------------------------------------------
    async def run(self, plan: Plan) -> AsyncIterator[tuple[int, Chunk]]:
        """The plan's (choice index, chunk)s as the engine makes them. However it ends, the request's slots are
        given back and it is counted once by its real status: 200; 499 when the client went away (the consumer
        stopped iterating) or 503 when the shutdown grace ran out; an engine failure is raised as an `APIError`
        (503 + Retry-After if the engine died). `plan.finals` holds each choice's last chunk."""
        state = _Tracker(self, plan)
        status = "499"
        try:
            chunks = plan.engine.stream(completion_id(), plan.prompt_ids, plan.sampling, plan.thinking_off)
            async with contextlib.aclosing(chunks):
                async for index, chunk in chunks:
                    state.observe(chunk)
                    if chunk.finish_reason is not None:
                        plan.finals[index] = chunk
                    yield index, chunk
            status = "200"
        except (asyncio.CancelledError, GeneratorExit):
            status = "503" if self.closing else status
            raise
        except Exception as error:
            failure = _engine_error(plan.engine, error)
            status = str(failure.status)
            raise failure from None
        finally:
            plan.release()
            state.finish(status, finals=plan.finals)

    async def complete(self, request: ChatCompletionRequest, plan: Plan) -> dict:
        """A whole (non-streaming) chat completion."""
        texts = [["", ""] for _ in range(plan.n)]
        token_logprobs: list[tuple[list, list]] = [([], []) for _ in range(plan.n)]  # reasoning, answer
        async with contextlib.aclosing(self.run(plan)) as chunks:
            async for index, chunk in chunks:
                texts[index][0] += chunk.reasoning
                texts[index][1] += chunk.answer
                if chunk.answer_logprobs is not None:
                    token_logprobs[index][0].extend(chunk.reasoning_logprobs)
                    token_logprobs[index][1].extend(chunk.answer_logprobs)
        choices = []
        for index, final in enumerate(plan.finals):
            reasoning, answer = texts[index]
            shown = reasoning if request.include_reasoning else None
            reasoning_logprobs, answer_logprobs = token_logprobs[index]
            calls = []
            if plan.tools:
                answer, calls = plan.tools.read(answer)
            choices.append(
                {
                    "index": index,
                    "message": message(answer, shown, calls),
                    "logprobs": logprobs(answer_logprobs, reasoning_logprobs if shown is not None else None)
                    if request.logprobs
                    else None,
                    "finish_reason": _finish_reason(final, calls),
                    "reasoning_truncated": _truncated(final, plan.budget),
                }
            )
        return {
            "id": completion_id(),
            "object": "chat.completion",
            "created": now(),
            "model": plan.engine.name,
            "choices": choices,
            "usage": _usage(plan),
        }

    async def stream(self, request: ChatCompletionRequest, plan: Plan) -> AsyncIterator[str]:
        """Server-sent events of a streaming chat completion, ending with `data: [DONE]`."""
        identifier, created = completion_id(), now()

        def event(choices: list[dict], usage_block: dict | None = None) -> str:
            body = {
                "id": identifier,
                "object": "chat.completion.chunk",
                "created": created,
                "model": plan.engine.name,
                "choices": choices,
            }
            if usage_block is not None:
                body["usage"] = usage_block
            return f"data: {json.dumps(body)}\n\n"

        held = [""] * plan.n  # with tools, the answer is held back until the tool parser has read it whole
        chunks = self.run(plan)
        try:
            for index in range(plan.n):
                yield event(
                    [
                        {
                            "index": index,
                            "delta": delta(answer="", role=True) | {"content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            async with contextlib.aclosing(chunks):
                async for index, chunk in chunks:
                    reasoning = chunk.reasoning if request.include_reasoning else ""
                    answer, calls, finish_reason = chunk.answer, [], chunk.finish_reason
                    if plan.tools:
                        held[index] += answer
                        answer = ""
                        if finish_reason is not None:
                            answer, calls = plan.tools.read(held[index])
                            answer, finish_reason = answer or "", _finish_reason(chunk, calls)
                    choice = {
                        "index": index,
                        "delta": delta(answer, reasoning, tool_calls=calls),
                        "logprobs": logprobs(
                            chunk.answer_logprobs, chunk.reasoning_logprobs if request.include_reasoning else None
                        )
                        if request.logprobs
                        else None,
                        "finish_reason": finish_reason,
                    }
                    if chunk.finish_reason is not None:
                        choice["reasoning_truncated"] = _truncated(chunk, plan.budget)
                    scored = choice["logprobs"] and any(
                        choice["logprobs"].get(k) for k in ("content", "reasoning_content")
                    )
                    if choice["delta"] or scored or chunk.finish_reason is not None:
                        yield event([choice])
            if request.stream_options and request.stream_options.include_usage:
                yield event([], _usage(plan))
        except APIError as failure:  # the engine failed mid-stream: tell the client in-band, then end the stream
            yield sse_error(failure)
        finally:
            await chunks.aclose()
            self.abandoned(plan)  # if it never reached the engine (its client left first): its slots back
        yield "data: [DONE]\n\n"


def _json_schema(request: ChatCompletionRequest) -> dict | None:
    """What `response_format` asks the answer to be: JSON valid against a schema ({}: any JSON object)."""
    wanted = request.response_format
    if wanted is None or wanted.type == "text":
        return None
    if wanted.type == "json_object":
        return {}
    return wanted.json_schema.schema_ or {"type": "object"}


def _finish_reason(final: Chunk | None, calls: list[dict]) -> str:
    """OpenAI's finish reason: `tool_calls` when the answer called tools and ended by itself."""
    reason = final.finish_reason if final else "stop"
    return "tool_calls" if calls and reason == "stop" else reason


def _tool_request(request: ChatCompletionRequest) -> dict:
    """The parts of a request vLLM's tool parsers read."""
    return request.model_dump(include={"model", "messages", "tools", "tool_choice"}, exclude_none=True)


def _engine_error(engine: VariantEngine, error: Exception) -> APIError:
    """What a client is told when its generation failed: 503 (retry) if the engine died under it."""
    if isinstance(error, APIError):
        return error
    if engine.dead or type(error).__name__ == "EngineDeadError":
        return APIError(503, f"the engine of '{engine.name}' died; retry", code="engine_unavailable", retry_after=10)
    logger.exception("variant %s: generation failed", engine.name)
    return APIError(500, "generation failed", code="internal_error")


def _truncated(final: Chunk | None, budget: int | None) -> bool:
    """Whether the budget ended the reasoning: it reached the cap (vLLM then forces the end marker). A budget of 0
    cuts nothing: there was no reasoning to cut."""
    return final is not None and bool(budget) and final.reasoning_tokens >= budget


def _usage(plan: Plan) -> dict:
    done = [final for final in plan.finals if final is not None]
    return usage(
        prompt_tokens=len(plan.prompt_ids),
        completion_tokens=sum(final.completion_tokens for final in done),
        reasoning_tokens=sum(final.reasoning_tokens for final in done),
    )


class _Tracker:
    """Timing and token metrics of one request."""

    def __init__(self, service: ChatService, plan: Plan):
        self.metrics, self.plan, self.name = service.metrics, plan, plan.engine.name
        self.started = time.perf_counter()
        self.first_token = self.first_answer = False
        self.done = False
        self.replica: str | None = None  # the Ray Serve replica that ran it (`l2s serve --ray`)

    def observe(self, chunk: Chunk) -> None:
        if chunk.replica:
            self.replica = chunk.replica
        elapsed = time.perf_counter() - self.started
        if not self.first_token and chunk.completion_tokens:
            self.first_token = True
            self.metrics.time_to_first_token.labels(self.name).observe(elapsed)
        if not self.first_answer and chunk.answer_tokens:
            self.first_answer = True
            self.metrics.time_to_first_answer_token.labels(self.name).observe(elapsed)

    def finish(self, status: str, finals: list[Chunk | None] | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.metrics.requests.labels(self.name, status).inc()
        if self.replica:
            self.metrics.replica_requests.labels(self.name, self.replica, status).inc()
        self.metrics.latency.labels(self.name).observe(time.perf_counter() - self.started)
        for final in finals or []:
            if final is None:
                continue
            self.metrics.reasoning_tokens.labels(self.name).observe(final.reasoning_tokens)
            self.metrics.answer_tokens.labels(self.name).observe(final.answer_tokens)
            if _truncated(final, self.plan.budget):
                self.metrics.budget_cuts.labels(self.name).inc()
