"""One measurement of HF transformers (PyTorch, sdpa attention, fp32, CPU, torch's default threads).

    .venv/bin/python -m benchmarks.runtime_bench.child_hf HF_DIR N_PROMPT NEW_TOKENS

`model.generate` (greedy, DynamicCache, logits for the last position only: generate passes logits_to_keep=1)
with a streamer that stamps each new token. EOS does not stop it: generation_config.eos_token_id is set to None,
so exactly NEW_TOKENS tokens come out and EOS stays an ordinary greedy token.

ttft_s: from just before model.generate() (which builds the cache, runs the prefill and picks the first token)
to the streamer receiving the first new token. decode_tok_s: (NEW_TOKENS - 1) / (last - first token stamp); the
streamer receives each token right after its argmax, before the next forward. peak_rss_gib: ru_maxrss of
this process (model load included).
"""
from __future__ import annotations

from .hf_generate import timed_generate
from .common import TokenClock, child_args, emit, load_prompt


def main(argv=None) -> None:
    a = child_args(argv, __doc__)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    ids, _ = load_prompt(a.prompt_tokens, a.ids)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    model.generation_config.eos_token_id = None          # no stop on EOS: exactly new_tokens
    clock = TokenClock()

    timed_generate(model, ids, a.new_tokens, clock)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    emit(clock.result(a.new_tokens, runtime=f"HF transformers {transformers.__version__} "
                                            f"(torch {torch.__version__.split('+')[0]}, sdpa)",
                      kv_bytes_per_token=2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4,
                      threads=torch.get_num_threads()))


if __name__ == "__main__":
    main()
