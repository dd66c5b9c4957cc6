"""Turning a growing list of token ids into text pieces, for streaming.

Decoding one token at a time loses the spaces and multi-byte characters that depend on neighbours
(SentencePiece's leading '▁', byte-level BPE splitting a UTF-8 character over tokens). So each step
decodes a short window: from `prefix` (a few tokens already printed, for context) to the end, and
emits what it adds beyond the window's already-printed text. A piece ending in U+FFFD is an
incomplete character and is held back until the next token completes it.
"""
from __future__ import annotations

from tokenizers import Tokenizer

CONTEXT_TOKENS = 4  # prompt tokens decoded with the first new tokens, so their leading space is right
INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """Text pieces of one sequence's new tokens; the concatenated pieces are its decoded text."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)[-CONTEXT_TOKENS:]
        self.prefix = 0               # start of the decode window
        self.printed = len(self.ids)  # ids before this are printed (or are context)
        self.pieces: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one token; returns the new text it completes ('' while a character is incomplete)."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.printed])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith(INCOMPLETE):
            return ""
        piece = after[len(before):]
        self.prefix, self.printed = self.printed, len(self.ids)
        self.pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        """The pieces so far; an incomplete character at the very end is not in it."""
        return "".join(self.pieces)
