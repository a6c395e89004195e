"""Prompts and stop tokens for a target, from its own tokenizer.

The chat template is the target's (``tokenizer.apply_chat_template``), applied to the whole
conversation for every turn, so a second turn sees the model's own first answer (docs/reference.md §3.3).
A tokenizer without a template gets a plain "User:/Assistant:" rendering, recorded as such. The
baseline and every method use the same prompts and stop set.
"""
from __future__ import annotations

import torch
from torch import Tensor

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def template_name(tokenizer) -> str:
    return "chat_template" if tokenizer.chat_template else "plain"


def render(tokenizer, messages: list[dict[str, str]]) -> Tensor:
    """Token ids [T] of the conversation, ending where the assistant's next message begins."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    else:
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return ids.long()


def stop_ids(tokenizer, generation_config=None) -> frozenset[int]:
    """EOS ids of the tokenizer and generation config, plus known end-of-turn tokens in the vocabulary."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(ids)


def decode(tokenizer, tokens: list[int], stops: frozenset[int]) -> str:
    """The answer text: tokens before the first stop token, special tokens dropped, whitespace stripped."""
    for i, token in enumerate(tokens):
        if token in stops:
            tokens = tokens[:i]
            break
    return tokenizer.decode(torch.tensor(tokens, dtype=torch.long), skip_special_tokens=True).strip()
