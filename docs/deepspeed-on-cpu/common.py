"""Shared pieces: the tiny model on disk, the data, the RL-like loss weighting."""
import os

import torch

MODEL_DIR = "/work/scratch/ds/tiny_llama"
VOCAB, SEQ, MB = 128, 16, 2  # vocabulary, sequence length, rows per micro-batch per rank
LR = 1e-2


def make_model_dir():
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.exists(MODEL_DIR):
        return
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(MODEL_DIR)


def micros_for(step: int, schedule: list[int]) -> int:
    return schedule[step % len(schedule)]


def step_data(step: int, micros: int, world: int) -> torch.Tensor:
    """(micros, world, MB, SEQ) tokens: micro-batch j of rank r is [j, r]."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (micros, world, MB, SEQ), generator=g)


def micro_loss(model, tokens):
    return model(input_ids=tokens, labels=tokens).loss
