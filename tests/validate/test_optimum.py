"""optimum's ORTModelForCausalLM drives our exports and produces our runtime's greedy tokens (docs/optimum.md).

optimum-onnx pins transformers<4.58, so it lives in its own virtualenv (build/venvs/optimum, `make
optimum-setup`); validate/optimum_check.py runs there as a subprocess and prints its tokens as JSON. Without
that virtualenv these tests skip, except under CI=true, where `make test` has built it and a skip would
hide a broken install.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess

import numpy as np
import pytest

from tests.helpers import REPO

OPTIMUM_PYTHON = os.path.join(REPO, "build", "venvs", "optimum", "bin", "python")
CHECK = os.path.join(REPO, "validate", "optimum_check.py")

if not (os.path.isfile(OPTIMUM_PYTHON) and glob.glob(os.path.join(
        REPO, "build", "venvs", "optimum", "lib", "python*", "site-packages", "optimum", "onnxruntime"))):
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs the optimum virtualenv: `make test` builds it with `make optimum-setup`")
    pytest.skip("no optimum virtualenv at build/venvs/optimum (`make optimum-setup`)", allow_module_level=True)

NEW_TOKENS = 64


def optimum_tokens(export: str, prompt: list[int], io_binding: bool = False) -> list[int]:
    """optimum's greedy tokens for the prompt ids (sink added by the script), never stopping at EOS."""
    cmd = [OPTIMUM_PYTHON, CHECK, "--export", export, "--prompt-ids", ",".join(map(str, prompt)),
           "--new-tokens", str(NEW_TOKENS), "--io-binding", "on" if io_binding else "off"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["tokens"]


def our_tokens(export: str, prompt: list[int]) -> list[int]:
    from runtime import Generator
    return Generator(export).generate([prompt], max_new_tokens=NEW_TOKENS, stop_token_ids=[]).tokens[0]


@pytest.mark.parametrize("arch,k,mode,kw,io_binding", [
    ("llama", "full", "pre-rope", {}, False),
    ("llama", 8, "pre-rope", {}, True),
    ("llama", 8, "post-rope", {}, False),
    ("gpt2", 9, "post-rope", {}, False),
    ("llama", 8, "pre-rope", {"k_value": "16"}, False),     # mixed shapes: the layout-aware subclass
])
def test_optimum_matches_our_runtime(arch, k, mode, kw, io_binding, tiny_export):
    """Prefill of the sink + 30 ids and 64 greedy decode steps (EOS does not stop either side): equal tokens."""
    export = tiny_export(arch, k, mode, **kw)
    prompt = np.random.default_rng(0).integers(3, 300, 30).tolist()
    ours = our_tokens(export, prompt)
    assert len(ours) == NEW_TOKENS
    assert optimum_tokens(export, prompt, io_binding) == ours
