"""onnxruntime-genai drives our exports unmodified and produces our runtime's greedy tokens.
Under CI=true a missing onnxruntime-genai is a failure, not a skip."""
from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("CI") == "true":
    import onnxruntime_genai  # noqa: F401  (CI must have it: `make setup` installs it)
else:
    pytest.importorskip("onnxruntime_genai")

from validate.interop import compare


@pytest.mark.parametrize("arch,k,mode,cache,kv_dtype", [
    ("llama", "full", "pre-rope", "concat", None), ("llama", 8, "pre-rope", "concat", None),
    ("llama", 8, "post-rope", "concat", None), ("qwen2", 8, "pre-rope", "concat", None),
    ("gpt2", 9, "post-rope", "concat", None), ("llama", "full", "pre-rope", "shared-buffer", None),
    ("llama", 8, "post-rope", "shared-buffer", None), ("llama", "full", "pre-rope", "shared-buffer", "int8"),
    ("qwen2", "full", "pre-rope", "shared-buffer", "int8"),
    # the newer families: K=full, a compressed export, the int8 default
    *[(arch, k, mode, cache, kv_dtype) for arch in ("qwen3", "phi3", "smollm3", "llama3", "gemma3", "mistral_window")
      for k, mode, cache, kv_dtype in (("full", "pre-rope", "concat", None), (8, "pre-rope", "concat", None),
                                       ("full", "pre-rope", "shared-buffer", "int8"))]])
def test_genai_matches_our_runtime(arch, k, mode, cache, kv_dtype, tiny_export):
    """Prefill and 64 decode steps: random tiny models may emit EOS early, so the prompt is the first seed's
    that runs the full 64 tokens in our runtime (genai must then match all 64). Shared-buffer exports: genai
    binds its own max-length buffer as past and present (past_present_share_buffer), as our runtime does; int8
    caches (KV_DTYPE=int8): genai takes the cache type from the graph and concatenates."""
    kw = {"kv_dtype": kv_dtype} if kv_dtype else {}
    if arch in ("gemma3", "mistral_window"):      # sliding windows: genai takes the cache that keeps every token
        kw["window_cache"] = "full"
    assert_same_64_tokens(tiny_export(arch, k, mode, cache=cache, **kw))


def assert_same_64_tokens(export: str) -> None:
    for seed in range(20):
        prompt = np.random.default_rng(seed).integers(3, 300, 30).tolist()
        theirs, ours = compare(export, prompt, 64)
        assert theirs == ours
        if len(ours) == 64:
            return
    pytest.fail("no prompt ran 64 tokens without EOS")


@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_genai_runs_our_kernel_through_its_custom_ops_library(arch, tiny_export):
    """KV_KERNEL=codes: genai_config names the library; genai concatenates the int8 cache, our kernel copies."""
    assert_same_64_tokens(tiny_export(arch, "full", "pre-rope", cache="shared-buffer", kv_dtype="int8",
                                      kv_kernel="codes"))


def test_mixed_ranks_get_no_genai_config(tiny_export):
    from graphs.metadata import load_metadata
    export = tiny_export("llama", 8, "pre-rope", k_value="16")
    assert not os.path.exists(os.path.join(export, "genai_config.json"))
    assert "one cache shape" in load_metadata(export).extra["genai"]
