"""Tiny models in the formats real reasoning models ship in (heads of 32 dimensions: vLLM's CPU attention has
no kernel for 16), built with `transformers` and `tokenizers`, no network:

- `qwen3`: a Qwen3-architecture model (random weights) with a ChatML template and Qwen3's `enable_thinking`
  switch (thinking off: the template writes an empty `<think>\\n\\n</think>\\n\\n` into the prompt);
- `r1`: a Qwen2-architecture model with a DeepSeek-R1-style template that opens `<think>` in the prompt. Its
  weights are lab-long's, carried over exactly (Qwen2 is Llama with q/k/v biases, here zero), so it solves the
  lab's sums: distill methods have correct samples to learn from;
- `plain`: a Llama-architecture instruct model (random weights) whose tokenizer has no reasoning markers at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# Qwen3's template, reduced to what matters here: the tools in a system turn, ChatML turns, reasoning dropped from
# past assistant turns, and the `enable_thinking` switch in the generation prompt.
QWEN3_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\n</tools><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)

# DeepSeek-R1's convention on the lab's roles: the generation prompt opens the reasoning block.
R1_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|><think>' }}{% endif %}"
)

PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '[' + message['role'] + '] ' + message['content'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)

CORPUS = ["What is 12+34? Let me add the numbers. The answer is 46.", "Hello, how are you today?"] * 20


def _bpe(special: list[str], markers: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if markers:  # added but not special, as Qwen3 and R1 have them: they stay in decoded text
        tokenizer.add_tokens([AddedToken(marker, special=False, normalized=False) for marker in markers])
    return tokenizer


def build_qwen3(out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<think>", "</think>", "<tool_call>", "</tool_call>"]
        ),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = QWEN3_TEMPLATE
    config = Qwen3Config(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    return _save(Qwen3ForCausalLM(config), fast, out)


def build_plain(out: Path) -> Path:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(["<pad>", "<s>", "</s>"], []), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = PLAIN_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )  # fmt: skip
    return _save(LlamaForCausalLM(config), fast, out)


def build_r1(lab_long: Path, out: Path) -> Path:
    """lab-long's weights in a Qwen2 body (zero q/k/v biases: the same function) with an R1-style template."""
    llama = LlamaForCausalLM.from_pretrained(lab_long, dtype=torch.float32)
    source = llama.config
    config = Qwen2Config(
        vocab_size=source.vocab_size, hidden_size=source.hidden_size, intermediate_size=source.intermediate_size,
        num_hidden_layers=source.num_hidden_layers, num_attention_heads=source.num_attention_heads,
        num_key_value_heads=source.num_key_value_heads, max_position_embeddings=source.max_position_embeddings,
        rms_norm_eps=source.rms_norm_eps, rope_parameters=dict(source.rope_parameters),
        tie_word_embeddings=source.tie_word_embeddings, bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id, pad_token_id=source.pad_token_id, use_sliding_window=False,
    )  # fmt: skip
    qwen2 = Qwen2ForCausalLM(config)
    state = {
        name: torch.zeros_like(tensor) for name, tensor in qwen2.state_dict().items() if name.endswith("_proj.bias")
    }
    state.update(llama.state_dict())
    missing, unexpected = qwen2.load_state_dict(state, strict=False)
    assert not unexpected and all(name.endswith("lm_head.weight") for name in missing), (missing, unexpected)
    tokenizer = AutoTokenizer.from_pretrained(lab_long)
    tokenizer.chat_template = R1_TEMPLATE
    return _save(qwen2, tokenizer, out)


def _save(model, tokenizer, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_all(lab_long: Path, out: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    return {
        "qwen3": build_qwen3(out / "tiny-qwen3"),
        "r1": build_r1(lab_long, out / "tiny-r1"),
        "plain": build_plain(out / "tiny-plain"),
    }
