"""One measurement of our runtime (runtime.Generator, onnxruntime CPU, IO-bound cache) on one of our exports.

    .venv/bin/python -m benchmarks.runtime_bench.child_ours EXPORT_DIR N_PROMPT NEW_TOKENS

The prompt ids start with the sink token; Generator prepends the sink itself, so it gets ids[1:] after a check
that export.json's sink token id equals ids[0]. Greedy, stop_token_ids=[] (no stop on EOS).

ttft_s: from just before Generator.generate() (prepends the sink, builds the empty cache, runs the prefill and
samples the first token) to its on_token callback for the first new token. decode_tok_s: (NEW_TOKENS - 1) /
(last - first on_token stamp). on_token runs after each token is sampled and incrementally detokenized, so
the stamps include that (small) detokenizer cost. The runtime's own Timings are reported alongside
(internal_prefill_s, internal_decode_tok_s = decode_tokens / decode_s) but not used in the table.
peak_rss_gib: ru_maxrss of this process (session creation included).
"""
from __future__ import annotations

from .common import TokenClock, child_args, emit, load_prompt


def main(argv=None) -> None:
    a = child_args(argv, __doc__)
    import onnxruntime
    from runtime import Generator

    ids, _ = load_prompt(a.prompt_tokens, a.ids)
    gen = Generator(a.model, provider="cpu")
    sink = gen.metadata.sink.get("token_id")
    if sink != ids[0]:
        raise SystemExit(f"{a.model} has sink token {sink}, the prompt ids start with {ids[0]}: re-export it "
                         "(python -m benchmarks.runtime_bench --rebuild-ours)")
    clock = TokenClock()
    clock.start()
    r = gen.generate([ids[1:]], max_new_tokens=a.new_tokens, stop_token_ids=[],
                     on_token=lambda i, token, piece: clock.token(token))
    assert r.tokens[0] == clock.tokens, "on_token and the result disagree"
    emit(clock.result(a.new_tokens, runtime=f"ours (onnxruntime {onnxruntime.__version__})",
                      kv_bytes_per_token=gen.metadata.kv_bytes_per_token,
                      internal_prefill_s=r.timings.prefill_s,
                      internal_decode_tok_s=r.timings.decode_tokens_per_s))


if __name__ == "__main__":
    main()
