"""What a generate() call returns: new tokens and text per prompt, why each stopped, and timings."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    """Wall-clock figures of one generate() call.

    prefill_s covers the prompt's forward pass and the first token; decode_s the steps after it.
    decode_tokens counts tokens produced by those steps over the whole batch (finished sequences
    excluded), so decode_tokens_per_s is the batch's throughput.
    """
    prefill_s: float
    decode_s: float
    decode_steps: int
    decode_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def summary(self) -> str:
        """One line: prefill time and decode throughput."""
        return (f"prefill {self.prefill_s * 1000:.1f} ms, decode {self.decode_tokens_per_s:.1f} tokens/s "
                f"({self.decode_tokens} tokens in {self.decode_steps} steps, {self.decode_s:.3f} s)")


@dataclass(frozen=True)
class GenerationResult:
    """Per prompt, in prompt order.

    prompt_tokens: the ids fed for each prompt (sink first, no padding).
    tokens: the generated ids, without the stop token that ended a sequence.
    texts: those tokens decoded (special tokens skipped), equal to the streamed pieces joined.
    finish_reasons: 'stop' (a stop token came) or 'length' (max_new_tokens reached).
    """
    prompt_tokens: list[list[int]]
    tokens: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]
    timings: Timings
    state: object = None      # saved.GenerationState with generate(keep_state=True): what resume= goes on from
