"""Tiny randomly initialised models of each supported architecture, saved as local HF directories: what the
tests and `python -m validate.families` check parity on.

No hub: configs are written here, weights drawn from a fixed seed, and a small byte-level BPE tokenizer is
trained on a bit of text so the export path runs exactly as for a real model. Each family's quirks are kept at
toy size (a windowed layer with a window shorter than the test prompts, LongRoPE's original length passed by
them, norms drawn away from their identity so they matter).

Entry point: `make(arch, path)`; `ARCHS` (every family, in `make test`), `EXTRA` (variants: phi4).
"""
from __future__ import annotations

import os

import torch

VOCAB = 300
TEXT = ("The quick brown fox jumps over the lazy dog. " * 8 +
        "Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump! " * 8)


def _tokenizer(path: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                          "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    fast.save_pretrained(path)
    return fast


def config(arch: str):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, \
        Qwen3Config, SmolLM3Config
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    if arch == "llama":
        return LlamaConfig(**common, rope_theta=10000.0)
    if arch == "llama3":    # Llama 3.2's quirks: llama3 RoPE scaling (prompts + decode pass its original
        # 64 positions, so the rescaled low frequencies matter) and embeddings tied to the LM head
        return LlamaConfig(**{**common, "tie_word_embeddings": True}, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    if arch == "qwen2":
        return Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=False)
    if arch == "qwen3":     # q_norm / k_norm before RoPE (their weights drawn away from 1 in make())
        return Qwen3Config(**common, rope_theta=10000.0, use_sliding_window=False)
    if arch in ("phi3", "phi4"):  # fused qkv_proj / gate_up_proj, LongRoPE: the test prompts pass its original
        # 32 positions, so the long factors rotate them (the calibration windows' too); phi4 (Phi-4-mini's quirk,
        # not in ARCHS): RoPE on the first 3/4 of each head only
        partial = 0.75 if arch == "phi4" else 1.0   # onnxruntime's fused op: rotated pairs a multiple of 8
        sizes = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64) if partial < 1 else {}
        half = int(sizes.get("head_dim", common["head_dim"]) * partial) // 2
        return Phi3Config(**{**common, **sizes}, original_max_position_embeddings=32, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32, "factor": 16.0,
            "partial_rotary_factor": partial, "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [1.0 + 2.0 * i for i in range(half)]})
    if arch == "smollm3":   # layer 1 is a NoPE layer (the real model: every fourth)
        return SmolLM3Config(**common, rope_theta=10000.0, no_rope_layers=[1, 0])
    if arch == "mistral":
        return MistralConfig(**common, rope_theta=10000.0, sliding_window=None)
    if arch == "gemma3":    # Gemma 3 1B's layout at toy size: one KV head, a windowed layer (window 16 < the test
        # prompts, its own RoPE base) and a global one (linear RoPE scaling), scores by query_pre_attn_scalar
        return Gemma3TextConfig(**{**common, "num_key_value_heads": 1, "head_dim": 32, "tie_word_embeddings": True,
                                   "rms_norm_eps": 1e-6}, query_pre_attn_scalar=24, sliding_window=16,
                                layer_types=["sliding_attention", "full_attention"], rope_parameters={
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}})
    # sliding windows smaller than the test prompts (40 and 29 tokens): every layer (Mistral's), or layer 1 only
    # (Qwen2's max_window_layers: layers from that index on)
    if arch == "mistral_window":
        return MistralConfig(**common, rope_theta=10000.0, sliding_window=16)
    if arch == "qwen2_window":
        return Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=True, sliding_window=12,
                           max_window_layers=1)
    if arch == "tinyllama_shape":   # not tiny: TinyLlama-1.1B's shapes, 4.4 GB in float32, bigger than the export
        # path can hold twice here; random weights (issue #19's synthetic model for the streamed path)
        return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                           rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                           tie_word_embeddings=False)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=2,
                          eos_token_id=2)
    raise ValueError(arch)


ARCHS = ("llama", "llama3", "qwen2", "qwen3", "phi3", "smollm3", "gemma3", "mistral", "mistral_window",
         "qwen2_window", "gpt2")
EXTRA = ("phi4",)     # Phi-4-mini's partial rotary on phi3: a variant, checked where it matters
UNWINDOWED = tuple(a for a in ARCHS if not a.endswith("_window") and a != "gemma3")  # what CACHE=shared-buffer takes


def make(arch: str, path: str, seed: int = 0, **overrides) -> str:
    """Write a tiny random `arch` model with a tokenizer to `path`; returns path."""
    from transformers import AutoModelForCausalLM
    os.makedirs(path, exist_ok=True)
    cfg = config(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():   # random init is small; widen it so logits differ clearly between tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
        if arch.startswith("qwen2"):  # make the q/k/v biases matter
            for layer in model.model.layers:
                for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    m.bias.normal_(0, 0.5)
        if arch in ("qwen3", "gemma3"):  # make the per-head q/k norms matter (Gemma's scale by 1 + w)
            for layer in model.model.layers:
                for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                    norm.weight.normal_(1.0 if arch == "qwen3" else 0.0, 0.5)
        if arch == "gemma3":             # and its four norms per layer (zeros at init: 1 + 0)
            for name, p in model.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.normal_(0.0, 0.3)
    model.save_pretrained(path, max_shard_size="1GB" if arch == "tinyllama_shape" else "50GB")  # shards: the
    _tokenizer(path)                                                                          # big one only
    return path
