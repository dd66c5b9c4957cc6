"""From prompts to the prefill batch: chat wrapping, tokenising, the sink prefix, left padding."""
from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from graphs.metadata import ExportError, ExportMetadata


def wrap_chat(prompt: str, chat: dict | None) -> str:
    """The export's chat template around one user message: prefix + prompt + suffix."""
    if not chat:
        raise ExportError("this export has no chat template: drop --chat (chat=False), "
                          "or export a chat model so export.json has 'chat'")
    return chat["prefix"] + prompt + chat["suffix"]


def check_utf8(prompt: str) -> None:
    """Refuse text that cannot be encoded as UTF-8: argv bytes that were not UTF-8 arrive as lone surrogates."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        char = ord(prompt[e.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"character U+{char:04X}"
        raise ValueError(f"the prompt is not UTF-8 text ({what} at character {e.start}): pass it as UTF-8") from None


def sink_prefix(metadata: ExportMetadata) -> list[int]:
    """The tokens every sequence starts with: [sink token id], or [] when the export has none."""
    token_id = metadata.sink.get("token_id") if metadata.sink else None
    return [] if token_id is None else [int(token_id)]


def encode_prompts(prompts: list, tokenizer: Tokenizer, metadata: ExportMetadata,
                   chat: bool = False) -> list[list[int]]:
    """Token ids of every prompt, sink first: strings are (chat-wrapped and) tokenised without special
    tokens; lists of ints are taken as token ids as they are (never chat-wrapped)."""
    if isinstance(prompts, (str, bytes)) or not prompts:
        raise TypeError("prompts must be a non-empty list of strings or of token-id lists")
    sink = sink_prefix(metadata)
    sequences = []
    for prompt in prompts:
        if isinstance(prompt, str):
            check_utf8(prompt)
            text = wrap_chat(prompt, metadata.chat) if chat else prompt
            ids = tokenizer.encode(text, add_special_tokens=False).ids
        elif chat:
            raise TypeError("chat=True needs text prompts; token-id prompts are used as they are")
        else:
            ids = [int(t) for t in prompt]
        if not sink and not ids:
            raise ValueError("empty prompt and the export has no sink token: nothing to condition on")
        sequences.append(sink + list(ids))
    return sequences


def right_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded input_ids and attention_mask, both (B, L): what a shared buffer holds, each sequence from
    slot 0 (the fused op reads the first sum(mask) slots of a row)."""
    width = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)   # (B, L)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)          # (B, L)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq)] = seq
        attention_mask[row, :len(seq)] = 1
    return input_ids, attention_mask


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded input_ids and attention_mask, both (B, L) int64, L the longest sequence."""
    width = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)   # (B, L)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)          # (B, L)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = seq
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask
