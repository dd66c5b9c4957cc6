"""One measurement of onnxruntime-genai on the model its own builder made (fp32, CPU).

    .venv/bin/python -m benchmarks.runtime_bench.child_genai GENAI_DIR N_PROMPT NEW_TOKENS

genai stops at its EOS and has no switch to ignore it (min_length suppresses EOS instead, changing the greedy
tokens), so the config is overlaid with a stand-in EOS, STANDIN_EOS (`<empty_output>`, a notebook marker that
never comes up in WikiText): the real EOS then stays an ordinary greedy token. Should genai ever produce the
stand-in, it stops early and this child fails saying so. max_length = N + NEW_TOKENS, so the KV buffer genai
preallocates (past_present_share_buffer) is no larger than needed.

ttft_s: from just before og.Generator(model, params) (allocates the KV buffers), append_tokens(prompt)
(the prefill), generate_next_token() to get_next_tokens() returning the first new token. decode_tok_s:
(NEW_TOKENS - 1) / (last - first token stamp), each stamp after generate_next_token + get_next_tokens.
peak_rss_gib: ru_maxrss of this process (model load included).

Threads: genai's own default ran this model at 17-23 tok/s on the 2-core machine, against 38 with
intra_op_num_threads set to the core count (the setting every other runtime here gets by default: onnxruntime
and torch use one thread per core), so the config is overlaid with intra_op_num_threads = os.cpu_count().
"""
from __future__ import annotations

import json
import os

from .common import TokenClock, child_args, emit, load_prompt

STANDIN_EOS = 16     # SmolLM2's <empty_output>


def main(argv=None) -> None:
    a = child_args(argv, __doc__)
    import onnxruntime_genai as og

    ids, _ = load_prompt(a.prompt_tokens, a.ids)
    config = og.Config(a.model)
    threads = os.cpu_count() or 1
    config.overlay(json.dumps({"model": {"eos_token_id": STANDIN_EOS,
                                         "decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + a.new_tokens, do_sample=False)
    clock = TokenClock()
    clock.start()
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    for _ in range(a.new_tokens):
        if gen.is_done():
            raise SystemExit(f"genai stopped after {len(clock.tokens)} tokens: it produced the stand-in EOS "
                             f"{STANDIN_EOS} (see child_genai.py) or reached max_length")
        gen.generate_next_token()
        clock.token(int(gen.get_next_tokens()[0]))
    with open(os.path.join(a.model, "genai_config.json"), encoding="utf-8") as f:
        d = json.load(f)["model"]["decoder"]
    emit(clock.result(a.new_tokens, runtime=f"onnxruntime-genai {og.__version__}",
                      kv_bytes_per_token=2 * d["num_hidden_layers"] * d["num_key_value_heads"] * d["head_size"] * 4,
                      threads=threads))


if __name__ == "__main__":
    main()
