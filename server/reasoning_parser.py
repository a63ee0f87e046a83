"""A vLLM reasoning parser for any pair of single-token markers, so that structured outputs (`response_format`)
constrain only the answer: vLLM's grammar waits until the parser sees the reasoning end.

vLLM builds one parser per request inside its engine process, from the name `l2s_markers` and this module
(`reasoning_parser_plugin`), with the variant's markers passed as `reasoning_parser_kwargs` on each request.
"""

from __future__ import annotations

from vllm.reasoning import ReasoningParserManager
from vllm.reasoning.basic_parsers import BaseThinkingReasoningParser

from server.engine import MARKER_PARSER


@ReasoningParserManager.register_module(MARKER_PARSER)
class MarkerReasoningParser(BaseThinkingReasoningParser):
    def __init__(self, tokenizer, *args, start: str = "<think>", end: str = "</think>", **kwargs):
        self._start, self._end = start, end
        super().__init__(tokenizer, *args, **kwargs)

    @property
    def start_token(self) -> str:
        return self._start

    @property
    def end_token(self) -> str:
        return self._end
