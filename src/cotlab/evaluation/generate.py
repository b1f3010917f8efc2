"""Batched greedy generation.

Prompts are sorted by length so each batch pads little, left-padded so every row's generation starts at the
same position, and returned in the original order. A row is truncated when it hit max_new_tokens without
emitting the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Generation:
    text: str
    truncated: bool
    n_new_tokens: int


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16) -> list[Generation]:
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stop_ids = {tokenizer.eos_token_id}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = tokenizer([prompts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for row, i in zip(new_tokens.tolist(), index):
            end = next((k for k, tok in enumerate(row) if tok in stop_ids), None)
            kept = row if end is None else row[:end]
            # Rows that finished early are padded with pad (== eos here) to the batch's length: not truncation.
            results[i] = Generation(
                text=tokenizer.decode(kept, skip_special_tokens=True),
                truncated=end is None,
                n_new_tokens=len(kept),
            )
    return results  # type: ignore[return-value]
