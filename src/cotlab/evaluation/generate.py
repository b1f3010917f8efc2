"""Batched greedy generation.

Prompts are sorted by length so each batch pads little, left-padded so every row's generation starts at the
same position, and returned in the original order.

A row ends at the end-of-turn token, or, given a `stop` pattern (the template's, from cotlab.prompts), as soon as
its text matches it: "The answer is: X" followed by a newline ends a CoT, so a 128-token cap is reached only by
outputs that never give an answer line. A stop pattern always ends with a newline, so a row's text is decoded and
matched only on the steps where it emits one. A row is truncated when it hit max_new_tokens without either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from cotlab.progress import progress


@dataclass
class Generation:
    text: str
    truncated: bool
    n_new_tokens: int


class StopOnPattern:
    """A transformers StoppingCriteria: True for each row whose new text matches `pattern`."""

    def __init__(self, tokenizer, pattern: re.Pattern, prompt_length: int):
        self.tokenizer, self.pattern, self.prompt_length = tokenizer, pattern, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = self.tokenizer.batch_decode(input_ids[:, -1:])
        for row, piece in enumerate(last):
            if "\n" in piece:
                text = self.tokenizer.decode(input_ids[row, self.prompt_length:], skip_special_tokens=True)
                done[row] = self.pattern.search(text) is not None
        return done


def _criteria(tokenizer, stop: str | None, prompt_length: int):
    if stop is None:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StopOnPattern, StoppingCriteria):
        pass

    return StoppingCriteriaList([_Stop(tokenizer, re.compile(stop), prompt_length)])


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
             stop: str | None = None, desc: str = "generate") -> list[Generation]:
    """`stop`: a regular expression ending in a newline; a row whose new text matches it stops there."""
    if stop is not None and not stop.endswith("\\n"):
        raise ValueError(f"stop pattern {stop!r} must end with a newline (\\n): rows are matched when they emit one")
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    pattern = re.compile(stop) if stop else None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    with progress(total=len(prompts), desc=desc, unit="prompt") as bar:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(device) for k, v in batch.items()}
            prompt_length = batch["input_ids"].shape[1]
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=_criteria(tokenizer, stop, prompt_length),
            )
            new_tokens = output[:, prompt_length:]
            for row, i in zip(new_tokens.tolist(), index):
                end = next((k for k, tok in enumerate(row) if tok in stop_ids), None)
                kept = row if end is None else row[:end]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                # Rows that finished early are padded to the batch's length: not truncation; nor is a row that
                # stopped on its pattern at the very last token.
                stopped = pattern is not None and pattern.search(text) is not None
                results[i] = Generation(text=text, truncated=end is None and not stopped, n_new_tokens=len(kept))
            bar.update(len(index))
    return results  # type: ignore[return-value]
