"""Generator: text generation on an export directory (model.onnx, export.json, tokenizer.json).

One generate() call is a prefill of the left-padded batch followed by one-token decode steps. The
KV cache stays on the device between steps (see cache.py, forward.py); only the last position's
logits come back to numpy, where the next tokens are sampled. A sequence that samples a stop token
is finished: from then on it is fed the pad token with attention_mask 0, so it changes nothing,
while the others go on; the call ends when all are finished or max_new_tokens are reached.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
from tokenizers import Tokenizer

from graphs.metadata import MODEL_FILE, TOKENIZER_FILE, ExportError, load_metadata

from .cache import KVCache
from .detokenize import IncrementalDetokenizer
from .forward import DecoderStep, check_io
from graphs.memory import return_freed_memory
from .prompts import encode_prompts, left_pad, right_pad
from .result import GenerationResult, Timings
from .sampling import sample
from .saved import GenerationState, load_state, save_state
from .session import open_session

DEFAULT_EXPORT = os.path.join("build", "latest")
DEFAULT_PREFILL_CHUNK = 256   # fastest of 256, 512, 1024, 2048, whole at a 4096-token prompt (docs/runtime_speed.md)

OnToken = Callable[[int, int, str], None]  # (batch index, token id, text piece)
Prompts = list[str] | list[list[int]]


def load_tokenizer(export_dir: str) -> Tokenizer:
    """The export's tokenizer.json, with a one-line error naming the fix when it is missing."""
    path = os.path.join(export_dir, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise ExportError(f"{export_dir} has no {TOKENIZER_FILE}: it is not a complete export, "
                          "run `make export` again")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:      # tokenizers raises plain Exceptions for unreadable or malformed files
        raise ExportError(f"{path} cannot be read ({e}): the file is truncated or damaged, "
                          "re-export it with `make export`") from None


class _Progress:
    """Per-sequence state of one generate() call: new tokens, finished flags, streamed text."""

    def __init__(self, tokenizer: Tokenizer, prompts: list[list[int]], stop_ids: set[int],
                 on_token: OnToken | None):
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.finished = np.zeros(len(prompts), dtype=bool)                 # (B,)
        self.stopped = [False] * len(prompts)
        self.detokenizers = [IncrementalDetokenizer(tokenizer, p) for p in prompts]
        self.stop_ids = stop_ids
        self.on_token = on_token
        self.sampled = 0  # tokens sampled per sequence so far (stop tokens included)

    def accept(self, next_ids: np.ndarray) -> int:
        """Record the sampled tokens (B,) of the unfinished sequences; returns how many were kept."""
        self.sampled += 1
        kept = 0
        for i, token in enumerate(next_ids.tolist()):
            if self.finished[i]:
                continue
            if token in self.stop_ids:
                self.finished[i] = self.stopped[i] = True
                continue
            self.tokens[i].append(token)
            piece = self.detokenizers[i].add(token)
            if self.on_token is not None:
                self.on_token(i, token, piece)
            kept += 1
        return kept

    def done(self, max_new_tokens: int) -> bool:
        return bool(self.finished.all()) or self.sampled >= max_new_tokens

    def next_inputs(self, next_ids: np.ndarray, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The next step's input_ids (B, 1) and new mask column (B, 1): finished rows get pad, masked out."""
        live = ~self.finished                                               # (B,)
        return np.where(live, next_ids, pad_token_id)[:, None], live.astype(np.int64)[:, None]

    def finish_reasons(self) -> list[str]:
        return ["stop" if s else "length" for s in self.stopped]


class Generator:
    """Loads an export once and generates from it.

    provider: 'cpu', 'cuda', or None for CUDA when onnxruntime-gpu and a GPU are usable, else CPU.
    optimization: onnxruntime graph optimisation level ('disable', 'basic', 'extended', 'all').
    intra_op_threads: onnxruntime intra-op threads (0: its default).
    prefill_chunk: the prompt is fed in chunks of this many tokens (0: all at once). Attention scores of
        a chunk are (B, heads, chunk, past+chunk), so chunks bound the prefill's peak memory at long
        prompts; the logits are the same (see tests/runtime/test_generator.py).
    """

    def __init__(self, export_dir: str = DEFAULT_EXPORT, provider: str | None = None,
                 optimization: str = "all", intra_op_threads: int = 0, device_id: int = 0,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        if prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0 (0: no chunking), got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        self.export_dir = export_dir
        self.metadata = load_metadata(export_dir)
        self.tokenizer = load_tokenizer(export_dir)
        self.session, self.device = open_session(os.path.join(export_dir, MODEL_FILE), provider,
                                                 optimization, intra_op_threads, device_id)
        check_io(self.session, self.metadata.layout)
        self.step = DecoderStep(self.session, self.device)

    def encode(self, prompts: Prompts, chat: bool = False) -> list[list[int]]:
        """Token ids the model will see for each prompt, sink first (see prompts.encode_prompts)."""
        return encode_prompts(prompts, self.tokenizer, self.metadata, chat)

    def fit_positions(self, sequences: list[list[int]], max_new_tokens: int) -> int:
        """max_new_tokens, cut where the model's positions end (GPT-2's learned positions index a table); a prompt
        longer than the positions is refused."""
        limit = self.metadata.model.get("max_positions")
        longest = max(len(s) for s in sequences)
        if not limit:
            return max_new_tokens
        if longest > limit:
            raise ValueError(f"the prompt is {longest} tokens (sink included) but the model has {limit} positions: "
                             "shorten the prompt")
        return min(max_new_tokens, limit - longest + 1)   # the last sampled token is never fed back

    def stop_ids(self, stop_token_ids: list[int] | None) -> set[int]:
        """The stop set: the export's eos tokens by default; an explicit list replaces it ([] never stops)."""
        return set(self.metadata.eos_token_ids if stop_token_ids is None else stop_token_ids)

    def new_cache(self, sequences: list[list[int]], max_new_tokens: int) -> KVCache:
        """The cache protocol the export was made for: growing (concat) or one buffer of the longest prompt +
        max_new_tokens tokens written in place (shared-buffer: prompts of different lengths only on the CPU,
        where each is prefilled into its own rows; the fused op knows no left padding)."""
        if self.metadata.cache_update != "shared-buffer":
            return KVCache.empty(self.metadata.layout, len(sequences), self.device)
        if len({len(s) for s in sequences}) > 1 and self.device.type != "cpu":
            raise ValueError("this shared-buffer export takes prompts of one length on a GPU (its fused attention "
                             "knows no left padding): generate them one at a time, or use a concat export")
        return KVCache.buffer(self.metadata.layout, len(sequences), self.device,
                              max(len(s) for s in sequences) + max_new_tokens)

    def pad(self, sequences: list[list[int]], cache: KVCache) -> tuple[np.ndarray, np.ndarray]:
        """The prompt batch as the cache holds it: right-padded in a shared buffer (each sequence from slot 0,
        its length in the mask), left-padded in a concat cache."""
        return (right_pad if cache.shared else left_pad)(sequences, self.metadata.pad_token_id)

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache) -> np.ndarray:
        """Feed the prompt batch (B, L) in chunks of prefill_chunk tokens; the last position's logits (B, V).
        A shared buffer on the CPU takes its batch one sequence at a time (the fused op takes chunks after the
        first at batch 1 only), each row of the buffer bound as a view: chunked, so the prefill's transients
        stay those of one chunk of one sequence."""
        if cache.shared and input_ids.shape[0] > 1 and cache.host is not None:
            lengths = attention_mask.sum(axis=1)                                         # (B,) right-padded
            rows = [self.prefill(input_ids[r:r + 1, :n], attention_mask[r:r + 1, :n], cache.row(r))
                    for r, n in enumerate(lengths)]
            cache.advance({}, input_ids.shape[1])
            return np.concatenate(rows)                                                  # (B, V)
        return self.feed(input_ids, attention_mask, cache)

    def feed(self, input_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache) -> np.ndarray:
        """Feed new tokens (B, T) on top of what the cache holds, in chunks of prefill_chunk; the mask covers
        past + T. The last position's logits (B, V)."""
        fed, past = input_ids.shape[1], attention_mask.shape[1] - input_ids.shape[1]
        chunk = self.prefill_chunk or fed
        if cache.shared and input_ids.shape[0] > 1:   # the fused op takes chunks after the first at batch 1 only
            chunk = fed
        for start in range(0, fed, chunk):
            end = min(start + chunk, fed)
            logits = self.step(input_ids[:, start:end], attention_mask[:, :past + end], cache)   # (B, V)
        return logits

    def save_state(self, path: str, state: GenerationState) -> tuple[int, int]:
        """Write a generation's state (result.state of generate(keep_state=True)) to path: (file bytes, cache
        bytes)."""
        return save_state(path, state, self.metadata)

    def load_state(self, path: str, continuation: Prompts | None = None, max_new_tokens: int = 64) -> GenerationState:
        """A saved generation of this export, with room in a shared buffer for the continuation and new tokens."""
        fed = max((len(ids) for ids in self.continuation_ids(continuation)), default=0)
        return load_state(path, self.metadata, self.device, room=1 + fed + max_new_tokens)

    def continuation_ids(self, prompts: Prompts | None) -> list[list[int]]:
        """Token ids that go on a sequence as they are: no sink, no template."""
        return [list(p) if not isinstance(p, str) else self.tokenizer.encode(p, add_special_tokens=False).ids
                for p in prompts or []]

    def resume_inputs(self, state: GenerationState, prompts: Prompts | None):
        """What a resumed call feeds first: (input_ids (B, 1 + T), attention_mask (B, S + 1 + T), history,
        finished). Each row feeds its token sampled last, then its continuation's T tokens (no sink, no template:
        they go on the sequence). A continuation wakes a finished sequence (its stop token is fed, as a
        conversation goes on after the model's turn); without one, finished sequences stay so, fed padding."""
        extra = self.continuation_ids(prompts) or [[] for _ in state.history]
        if len(extra) != len(state.history):
            raise ValueError(f"the saved session holds {len(state.history)} sequence(s), {len(extra)} continuation(s) "
                             "given: give one per sequence, or none")
        if len({len(e) for e in extra}) > 1 or (len(extra) > 1 and extra[0] and state.cache.shared):
            raise ValueError("continuations of a saved batch must be all of one length (and none for a shared-buffer "
                             "export): resume the sequences one at a time, or continue them by generation alone")
        finished = state.finished & (not extra[0])                                     # (B,)
        input_ids = np.array([[int(n)] + e for n, e in zip(state.next_ids, extra)], np.int64)  # (B, 1 + T)
        input_ids[finished] = self.metadata.pad_token_id
        new_mask = np.where(finished[:, None], 0, np.ones_like(input_ids))              # (B, 1 + T)
        history = [h + ([int(n)] if f else []) + e
                   for h, n, f, e in zip(state.history, state.next_ids, state.finished & ~finished, extra)]
        return input_ids, np.concatenate([state.attention_mask, new_mask], axis=1), history, finished

    def generate(self, prompts: Prompts, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, stop_token_ids: list[int] | None = None,
                 chat: bool = False, on_token: OnToken | None = None, resume: GenerationState | None = None,
                 keep_state: bool = False) -> GenerationResult:
        """Continue every prompt (a list of strings, or of token-id lists) by up to max_new_tokens.

        temperature 0 is greedy; otherwise tokens are sampled with top_k / top_p from a numpy
        Generator seeded with `seed` (one per call, so a call is reproducible). on_token(i, id, piece)
        is called for every kept token of prompt i, with the text that token completes.
        keep_state: the result carries `state` (the cache and what comes next) for a later call's `resume`,
        which goes on from there (prompts are then continuations of each sequence, or empty; seed is not used).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if resume is None:
            sequences = self.encode(prompts, chat)
            max_new_tokens = self.fit_positions(sequences, max_new_tokens)
            cache = self.new_cache(sequences, max_new_tokens)
            input_ids, attention_mask = self.pad(sequences, cache)                     # (B, L), (B, L)
            history, rng = sequences, np.random.default_rng(seed)
        else:
            input_ids, attention_mask, history, finished = self.resume_inputs(resume, prompts)
            cache = resume.cache
            max_new_tokens = self.fit_positions(history, max_new_tokens)
            rng = np.random.default_rng()
            rng.bit_generator.state = resume.rng_state
            if cache.shared and cache.capacity < attention_mask.shape[1] + max_new_tokens - 1:
                raise ValueError(f"the saved cache has room for {cache.capacity} tokens, "
                                 f"{attention_mask.shape[1] + max_new_tokens - 1} needed: load it with more room")
        progress = _Progress(self.tokenizer, history, self.stop_ids(stop_token_ids), on_token)
        if resume is not None:
            progress.finished, progress.stopped = finished.copy(), finished.tolist()

        start = time.perf_counter()
        logits = (self.prefill if resume is None else self.feed)(input_ids, attention_mask, cache)   # (B, V)
        next_ids = sample(logits, rng, temperature, top_k, top_p)                      # (B,)
        progress.accept(next_ids)
        prefill_s = time.perf_counter() - start

        start, steps, decoded = time.perf_counter(), 0, 0
        while not progress.done(max_new_tokens):
            new_ids, new_mask = progress.next_inputs(next_ids, self.metadata.pad_token_id)  # (B, 1), (B, 1)
            attention_mask = np.concatenate([attention_mask, new_mask], axis=1)        # (B, past+1)
            logits = self.step(new_ids, attention_mask, cache)                         # (B, V)
            next_ids = sample(logits, rng, temperature, top_k, top_p)                  # (B,)
            decoded += progress.accept(next_ids)
            steps += 1
        decode_s = time.perf_counter() - start
        state = None
        if keep_state:
            state = GenerationState(cache, attention_mask, next_ids, progress.finished.copy(),
                                    [h + t for h, t in zip(history, progress.tokens)], rng.bit_generator.state)
        del cache, logits
        return_freed_memory()

        return GenerationResult(
            prompt_tokens=history, tokens=progress.tokens,
            texts=[d.text for d in progress.detokenizers], finish_reasons=progress.finish_reasons(),
            timings=Timings(prefill_s, decode_s, steps, decoded), state=state)
