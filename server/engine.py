"""One vLLM engine per hosted variant: the only module of the server that touches vLLM.

`VariantEngine.stream` yields `Chunk`s (reasoning and answer text deltas with running token counts) for one
request; cancelling the iteration (a client that went away) aborts the request inside the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from l2s.adapters import adapter_rank, adapter_target_modules, lora_request, vllm_max_rank
from l2s.cpu_lora_fix import check_cpu_lora_fix
from l2s.formats import PLAIN, ReasoningFormat, detect_format
from l2s.generation import (
    cpu_engine_environment,
    cpu_scheduling,
    engine_dtype,
    model_max_length,
    on_gpu,
    reasoning_config,
)
from l2s.reasoning import PlainStream, ReasoningMarkers, ReasoningStream
from server.config import VariantConfig

logger = logging.getLogger("l2s.server")
MARKER_PARSER = "l2s_markers"  # server/reasoning_parser.py's name in vLLM's registry
_ENGINE_BUILDS = ThreadPoolExecutor(thread_name_prefix="engine-build")


# One generated token's log-probability: (its text, its logprob, the most likely alternatives as (text, logprob)).
TokenLogprob = tuple[str, float, list[tuple[str, float]]]


@dataclass
class Chunk:
    reasoning: str
    answer: str
    reasoning_tokens: int
    answer_tokens: int
    completion_tokens: int
    finish_reason: str | None  # set on the last chunk of a choice
    # when logprobs were asked for: those of this chunk's reasoning tokens and answer tokens (markers in neither)
    reasoning_logprobs: list[TokenLogprob] | None = None
    answer_logprobs: list[TokenLogprob] | None = None
    replica: str | None = None  # on a request's first chunk under `l2s serve --ray`: the replica that runs it

    def then(self, later: Chunk) -> Chunk:
        """This chunk and the next one of the same choice, as one."""

        def joined(first: list | None, second: list | None) -> list | None:
            return None if first is None and second is None else [*(first or []), *(second or [])]

        return Chunk(
            reasoning=self.reasoning + later.reasoning,
            answer=self.answer + later.answer,
            reasoning_tokens=later.reasoning_tokens,
            answer_tokens=later.answer_tokens,
            completion_tokens=later.completion_tokens,
            finish_reason=later.finish_reason,
            reasoning_logprobs=joined(self.reasoning_logprobs, later.reasoning_logprobs),
            answer_logprobs=joined(self.answer_logprobs, later.answer_logprobs),
            replica=self.replica or later.replica,
        )


def coalesce(chunks: list[tuple[int, Chunk]]) -> list[tuple[int, Chunk]]:
    """(choice index, chunk)s with each choice's chunks joined into one, in the order the choices first came."""
    joined: dict[int, Chunk] = {}
    for index, chunk in chunks:
        joined[index] = joined[index].then(chunk) if index in joined else chunk
    return list(joined.items())


@dataclass
class GenerationParams:
    max_tokens: int
    thinking_token_budget: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: list[str]
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float] = field(default_factory=dict)
    ignore_eos: bool = False
    min_tokens: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # alternatives per token besides the sampled one; None: no logprobs
    json_schema: dict[str, Any] | None = None  # the answer must be JSON valid against it ({}: any JSON object)
    keep_special_tokens: bool = False  # in the text (tool-call markers are special tokens in many models)


class VariantEngine:
    def __init__(self, variant: VariantConfig, position: int = 0):
        self.variant = variant
        self.position = position  # this engine's place among the server's engines (for CPU binding)
        self.format = PLAIN  # detected from the tokenizer when the engine starts
        self.max_model_len = variant.engine.max_model_len  # the model's own, when not set, once it starts
        self.engine = None
        self.tokenizer = None
        self.in_flight = 0  # sequences admitted and not finished (running + waiting in the engine)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenize-{variant.name}")
        self.restarts = 0  # restarts in place after the engine died
        self.restarting = False
        self.failed = False  # died with no restart left
        self._unfinished_build = None  # an engine build the server stopped waiting for (see `start`)
        self.adapters: list[AdapterEngine] = []  # LoRA variants served on this engine (they add themselves)
        self.lora = None  # vLLM's LoRARequest for an adapter variant's requests; a full model's: none
        self.live_replicas: int | None = None  # a Ray Serve deployment's running replicas (`l2s serve --ray`)

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.engine.errored

    @property
    def dead(self) -> bool:
        """vLLM's own verdict: its monitor thread saw the engine process exit, or its output loop failed."""
        return self.engine is not None and self.engine.errored

    @property
    def status(self) -> str:
        if self.ready:
            return "ready"
        if self.dead or self.failed:
            return "dead"
        return "restarting" if self.restarting else "loading"

    @property
    def host(self) -> VariantEngine:
        """The variant whose vLLM engine this one runs on: itself, or an adapter's base."""
        return self

    @property
    def running(self) -> int:
        """This variant's sequences in the engine's slots: the variants sharing an engine fill its slots in turn
        (base, then adapters), so that the counts add up to what the engine runs."""
        host = self.host
        before = 0
        for variant in [host, *host.adapters]:
            if variant is self:
                break
            before += variant.in_flight
        return max(0, min(self.in_flight, host.variant.engine.max_num_seqs * host.copies - before))

    @property
    def waiting(self) -> int:
        return self.in_flight - self.running

    @property
    def capacity(self) -> int:
        """Sequences admitted at most, over every variant on the engine: running in it, plus waiting for a slot
        (the config's figures are per engine: times the engines serving the variant)."""
        host = self.host
        return (host.variant.engine.max_num_seqs + host.variant.max_waiting) * host.copies

    @property
    def copies(self) -> int:
        """How many engines serve this variant: one here; a Ray Serve deployment's live replicas (remote_engine)."""
        return 1

    def reserve(self, sequences: int) -> bool:
        """Admit a request of `sequences` choices if the engine's slots and queue have room for them all."""
        host = self.host
        if sum(variant.in_flight for variant in [host, *host.adapters]) + sequences > self.capacity:
            return False
        self.in_flight += sequences
        return True

    def release(self, sequences: int) -> None:
        self.in_flight -= sequences

    @property
    def vocab_size(self) -> int:
        return self.sampling_checks()[0].get_vocab_size()

    async def tokenize(self, messages: list[dict], template_kwargs: dict | None = None) -> list[int]:
        """`prompt_ids` on this engine's one tokenizer thread: off the event loop, and never two calls at once
        (a fast tokenizer is not safe to share between threads)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, self.prompt_ids, messages, template_kwargs)

    def detect_format(self, tokenizer=None) -> ReasoningFormat:
        """The variant's reasoning format, from its config and its tokenizer (loaded here unless given;
        ValueError: refused at startup)."""
        from transformers import AutoTokenizer

        wanted = self.variant.reasoning
        markers = ReasoningMarkers(wanted.start, wanted.end) if wanted.start else None
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(self.variant.path)
        try:
            return detect_format(tokenizer, markers, wanted.start_in_prompt, wanted.enabled)
        except ValueError as error:
            raise ValueError(f"variant {self.variant.name}: {error}") from None

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.format = await asyncio.to_thread(self.detect_format)
        self.check_tool_parser()
        self.max_model_len = self.variant.engine.max_model_len or model_max_length(self.variant.path)

        settings = self.variant.engine
        # The engine's worker process is spawned now and reads these from the environment it inherits.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
        cpu_engine_environment()
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = settings.cpu_threads_bind or str(
            self.position % (os.cpu_count() or 1)
        )
        args = AsyncEngineArgs(
            model=str(self.variant.path),
            served_model_name=[self.variant.name],
            dtype=engine_dtype(settings.dtype),
            max_model_len=self.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            tensor_parallel_size=settings.tensor_parallel_size,
            data_parallel_size=settings.data_parallel_size,
            reasoning_config=reasoning_config(self.format),
            structured_outputs_config=self._structured_outputs_config(),
            enable_prefix_caching=True,
            disable_log_stats=True,
            **self._lora_args(),
            **({"gpu_memory_utilization": settings.gpu_memory_utilization} if on_gpu() else {}),
            **cpu_scheduling(self.max_model_len or 8192),  # keeps seeded requests from killing a CPU engine
        )
        # Building the engine blocks (it starts worker processes and loads weights): keep the loop free. If the
        # server stops meanwhile, the build cannot be interrupted: `shutdown` waits for it and shuts down the
        # engine it made, so no engine process outlives the server.
        build = _ENGINE_BUILDS.submit(AsyncLLM.from_engine_args, args)
        try:
            engine = await asyncio.wrap_future(build)
        except asyncio.CancelledError:
            self._unfinished_build = build
            raise
        self.tokenizer = engine.get_tokenizer()
        self.max_model_len = engine.model_config.max_model_len  # what vLLM settled on
        self.engine = engine

    def _lora_args(self) -> dict:
        """vLLM's adapter slots, when LoRA variants are served on this engine."""
        if not self.adapters:
            return {}
        if not on_gpu():
            check_cpu_lora_fix()
        settings = self.variant.engine
        paths = [a.variant.path for a in self.adapters]
        rank = settings.max_lora_rank or vllm_max_rank([adapter_rank(path) for path in paths])
        return {
            "enable_lora": True,
            "max_loras": settings.max_loras or len(self.adapters),
            "max_lora_rank": rank,
            # LoRA layers only where an adapter has weights (and, on the CPU, compiled: l2s/cpu_lora_compiled.py)
            "lora_target_modules": adapter_target_modules(paths),
        }

    def check_tool_parser(self) -> None:
        """A variant's `tool_parser` must be one of vLLM's (ValueError: refused at startup)."""
        from vllm.tool_parsers import ToolParserManager

        name = self.variant.tool_parser
        if name is not None and name not in ToolParserManager.list_registered():
            raise ValueError(
                f"variant {self.name}: unknown tool_parser {name!r}; vLLM has {ToolParserManager.list_registered()}"
            )

    def tool_reader(self, request: dict) -> ToolReader:
        """What reads tool calls out of this request's answers, with the variant's vLLM tool parser. Built when
        the request is planned: vLLM's request model and parser refuse what they cannot read (ValueError: a
        400) before anything is generated. `request` is the chat request (its `messages` and `tools`)."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        try:
            vllm_request = ChatCompletionRequest.model_validate(request)
            parser_class = ToolParserManager.get_tool_parser(self.variant.tool_parser)
            parser_class(self.tokenizer, vllm_request.tools)
        except Exception as error:  # pydantic's ValidationError is a ValueError; a parser may raise anything
            raise ValueError(f"the tool parser cannot read this request: {str(error)[:300]}") from None
        return ToolReader(lambda: parser_class(self.tokenizer, vllm_request.tools), vllm_request, self.name)

    def _structured_outputs_config(self) -> dict:
        """vLLM's structured outputs, told where a reasoning block ends (server/reasoning_parser.py) so that a
        `response_format` constrains the answer and leaves the reasoning free."""
        settings = self.variant.engine.structured_outputs
        config = {"backend": settings.backend, "disable_any_whitespace": settings.compact_json}
        if self.format.reasons:
            config |= {"reasoning_parser": MARKER_PARSER, "reasoning_parser_plugin": "server.reasoning_parser"}
        return config

    def shutdown(self) -> None:
        if self._unfinished_build is not None:  # stopped while loading: wait for the engine, then stop it
            build, self._unfinished_build = self._unfinished_build, None
            with contextlib.suppress(Exception):
                build.result().shutdown()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def prompt_ids(self, messages: list[dict], template_kwargs: dict | None = None) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False, **(template_kwargs or {})
            )
        )

    def splitter(self, thinking_off: bool) -> ReasoningStream | PlainStream:
        """What splits one choice's stream: into reasoning and answer, or all answer when the model does not
        reason or its template was told not to."""
        if not self.format.reasons or thinking_off:
            return PlainStream()
        fmt = self.format
        return ReasoningStream(fmt.start_id, fmt.end_id, fmt.markers, start_in_prompt=fmt.start_in_prompt)

    async def refresh(self) -> None:
        """Called by the watchdog every half second: an engine in this process has nothing to look up."""

    def sampling_checks(self) -> tuple:
        """What vLLM checks a request's sampling parameters against: the engine's model, speculative-decoding and
        structured-output configs (a remote engine holds a copy of its replicas': server/remote_engine.py)."""
        config = self.engine.vllm_config
        return config.model_config, config.speculative_config, config.structured_outputs_config

    def sampling_params(self, params: GenerationParams, n: int = 1):
        """vLLM's sampling parameters for one request. Built before the response starts, so that whatever vLLM
        itself rejects raises `ValueError` here (a 400) rather than failing mid-stream."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if params.json_schema == {}:
            structured = StructuredOutputsParams(json_object=True)
        elif params.json_schema is not None:
            structured = StructuredOutputsParams(json=params.json_schema)
        try:
            sampling = SamplingParams(
                n=n,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                seed=params.seed,
                stop=params.stop or None,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                thinking_token_budget=params.thinking_token_budget,
                logit_bias=params.logit_bias or None,
                ignore_eos=params.ignore_eos,
                min_tokens=params.min_tokens,
                min_p=params.min_p,
                repetition_penalty=params.repetition_penalty,
                logprobs=params.logprobs,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA,
                skip_special_tokens=not params.keep_special_tokens,
            )
            # what the engine checks as the request arrives (logprob counts, the JSON schema), checked now
            sampling.verify(*self.sampling_checks(), self.tokenizer)
            return sampling
        except VLLMClientError as error:  # not a ValueError subclass
            raise ValueError(str(error)) from None

    async def stream(
        self, request_id: str, prompt_ids: list[int], sampling, thinking_off: bool = False
    ) -> AsyncIterator[tuple[int, Chunk]]:
        """Yield (choice index, chunk) as the engine produces tokens, for each of `sampling.n` choices."""
        n = sampling.n
        splitters = [self.splitter(thinking_off) for _ in range(n)]
        generated = [0] * n  # every generated token, end-of-sequence included (as vLLM's own usage counts)
        # aclosing: when our caller stops early, vLLM's generator is closed at once, which aborts the request
        markers = self.format.markers
        outputs = self.engine.generate(
            {"prompt_token_ids": prompt_ids},
            sampling,
            request_id,
            # where the reasoning ends, for structured outputs (server/reasoning_parser.py); with thinking
            # switched off there is no reasoning: the answer's constraint starts at once
            # (and not from the prompt, whose earlier turns may hold an end marker)
            reasoning_ended=thinking_off if markers and sampling.structured_outputs else None,
            reasoning_parser_kwargs={"start": markers.start, "end": markers.end} if markers else None,
            lora_request=self.lora,
        )
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                for choice in output.outputs:
                    splitter = splitters[choice.index]
                    generated[choice.index] += len(choice.token_ids)
                    kept = [i for i, t in enumerate(choice.token_ids) if t != self.tokenizer.eos_token_id]
                    reasoning, answer = splitter.feed(choice.text, [choice.token_ids[i] for i in kept])
                    if choice.finish_reason is not None:
                        tail_reasoning, tail_answer = splitter.flush()
                        reasoning, answer = reasoning + tail_reasoning, answer + tail_answer
                    scored: dict[str, list[TokenLogprob]] | None = None  # by phase, when logprobs were asked for
                    if sampling.logprobs is not None:
                        scored = {"reasoning": [], "answer": []}
                        for i, phase in zip(kept, splitter.phases, strict=True):
                            if phase is not None:  # (a marker belongs to neither)
                                token = choice.token_ids[i]
                                scored[phase].append(_token_logprob(token, choice.logprobs[i], sampling.logprobs))
                    yield (
                        choice.index,
                        Chunk(
                            reasoning=reasoning,
                            answer=answer,
                            reasoning_tokens=splitter.reasoning_tokens,
                            answer_tokens=splitter.answer_tokens,
                            completion_tokens=generated[choice.index],
                            finish_reason=choice.finish_reason,
                            reasoning_logprobs=scored and scored["reasoning"],
                            answer_logprobs=scored and scored["answer"],
                        ),
                    )


class AdapterEngine(VariantEngine):
    """A LoRA adapter variant: its requests run on its base variant's engine with the adapter applied (vLLM's
    multi-LoRA serving). It has its own name, budgets, efforts, chat template arguments, tool parser and metrics;
    the engine, its slots and queue, the tokenizer and the reasoning format are the base's. The base starts,
    restarts and stops the engine; an adapter's status is its base's."""

    def __init__(self, variant: VariantConfig, base: VariantEngine):
        super().__init__(variant, base.position)
        self._base = base
        base.adapters.append(self)
        self.lora = lora_request(variant.name, variant.path, int_id=len(base.adapters))  # ids unique per engine
        self._tokenizer_thread.shutdown(wait=False)
        self._tokenizer_thread = base._tokenizer_thread  # one thread per tokenizer: the base's is shared
        # loaded into the engine at startup; after a restart of the base's engine vLLM loads it again at its
        # first request (the files are checked once, at startup)
        self.loaded = False

    @property
    def host(self) -> VariantEngine:
        return self._base

    # the engine, tokenizer, format and context are the base's, whatever the base's restarts make them
    engine = property(lambda self: self._base.engine, lambda self, value: None)
    tokenizer = property(lambda self: self._base.tokenizer, lambda self, value: None)
    format = property(lambda self: self._base.format, lambda self, value: None)
    max_model_len = property(lambda self: self._base.max_model_len, lambda self, value: None)

    @property
    def ready(self) -> bool:
        return self.loaded and self._base.ready

    @property
    def status(self) -> str:
        return self._base.status if self.loaded or self._base.status != "ready" else "loading"

    async def start(self) -> None:
        """Load the adapter into the base's engine (started before), so that an adapter that does not fit the
        base is refused at startup rather than failing its first request."""
        self.check_tool_parser()
        try:
            await self.engine.add_lora(self.lora)
        except Exception as error:
            raise ValueError(f"variant {self.name}: the adapter does not load on {self._base.name}: {error}") from None
        self.loaded = True

    def shutdown(self) -> None:
        pass  # (the base stops the engine)


@dataclass
class ToolReader:
    """Reads one answer into its text and its tool calls (OpenAI's shape). An answer the parser fails on is
    returned as text, with the failure logged: the generation is not lost to a parser's bug."""

    new_parser: Any
    request: Any
    variant: str

    def read(self, answer: str) -> tuple[str | None, list[dict]]:
        try:
            found = self.new_parser().extract_tool_calls(answer, self.request)
        except Exception:
            logger.exception("variant %s: the tool parser failed on an answer; returned as text", self.variant)
            return answer, []
        if not found.tools_called:
            return answer, []
        return found.content or None, [call.model_dump() for call in found.tool_calls]


def _token_logprob(token: int, candidates: dict, top: int) -> TokenLogprob:
    """vLLM's logprobs of one position (the sampled token, and the `top` most likely) as a `TokenLogprob`."""
    sampled = candidates[token]
    ranked = sorted((entry for entry in candidates.values() if entry.rank <= top), key=lambda entry: entry.rank)
    return (
        sampled.decoded_token or "",
        max(sampled.logprob, -9999.0),  # -inf is not JSON
        [(entry.decoded_token or "", max(entry.logprob, -9999.0)) for entry in ranked],
    )
