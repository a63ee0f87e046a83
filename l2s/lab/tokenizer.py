"""The lab tokenizer: byte-level BPE in which every digit is its own token and the reasoning markers and
chat roles are single added tokens. Saved as a Hugging Face `tokenizer.json` + `tokenizer_config.json` with a
chat template, so transformers, vLLM, TRL and mergekit load it unchanged.

Digits stay single tokens (arithmetic is done digit by digit); words in the traces become single tokens, which
keeps the long traces short enough to train on two CPU cores. Byte-level means any user text encodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
THINK_START, THINK_END = "<think>", "</think>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT]
MARKER_TOKENS = [THINK_START, THINK_END]  # added but not "special": they stay in decoded text, as in R1/Qwen3

# The prompt the model was trained on: `<s><|user|>QUESTION<|assistant|>`; the model writes `<think>` itself.
# System messages are not part of the lab's training data and are left out.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` (deterministic for the same texts)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_tokens([AddedToken(marker, special=False, normalized=False) for marker in MARKER_TOKENS])
    return wrap(tokenizer)


def wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(directory)
