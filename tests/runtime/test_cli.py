"""runtime/: generation through IO binding on a toy export (tests/toy_graph.py) against a numpy reference."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from runtime.cli import main as cli_main
from tests.helpers import REPO


NO_STOP = []  # stop_token_ids that never stop


def test_cli_streams_and_reports_timings(toy, gen):
    proc = subprocess.run([sys.executable, "-m", "runtime", "--export", toy[0], "--prompt", "the cat sat on",
                           "--max-new-tokens", "6", "--provider", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = gen.generate(["the cat sat on"], max_new_tokens=6).texts[0]
    text, timing = proc.stdout.splitlines()
    assert text == expected
    assert timing.startswith("prefill ") and "tokens/s" in timing


def test_cli_batch_and_errors(toy, capsys):
    assert cli_main(["--export", toy[0], "--prompt", "dog", "--prompt", "the cat", "--max-new-tokens", "4",
                     "--temperature", "0.7", "--top-k", "3", "--top-p", "0.9", "--seed", "1", "--chat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[0]") and lines[1].startswith("[1]") and "tokens/s" in lines[2]
    assert cli_main(["--export", os.path.join(toy[0], "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make export" in err


ISOLATED = textwrap.dedent("""
    import sys

    BLOCKED = ("torch", "transformers", "onnx")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} must not be imported by runtime")
            return None

    sys.meta_path.insert(0, Block())
    from runtime import Generator
    result = Generator(sys.argv[1]).generate(["the cat sat on", "dog"], max_new_tokens=5, stop_token_ids=[])
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print(result.tokens)
""")


def test_runtime_imports_no_torch_transformers_or_onnx(toy, gen):
    proc = subprocess.run([sys.executable, "-c", ISOLATED, toy[0]], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = gen.generate(["the cat sat on", "dog"], max_new_tokens=5, stop_token_ids=NO_STOP).tokens
    assert proc.stdout.strip() == str(expected)


def test_provider_choice(toy, monkeypatch):
    from runtime import session as S
    assert S._provider_list(None, 0) == [S.CPU_PROVIDER] or S.cuda_available()
    monkeypatch.setattr(S, "cuda_available", lambda: True)
    assert S._provider_list(None, 1) == [(S.CUDA_PROVIDER, {"device_id": 1}), S.CPU_PROVIDER]
    assert S._provider_list("cpu", 0) == [S.CPU_PROVIDER]
    monkeypatch.setattr(S, "cuda_available", lambda: False)
    with pytest.raises(S.ProviderError, match="onnxruntime-gpu"):
        S._provider_list("cuda", 0)
    with pytest.raises(S.ProviderError):
        S._provider_list("tpu", 0)
    with pytest.raises(ValueError, match="optimisation level"):
        S.session_options("fast")
    session, device = S.open_session(os.path.join(toy[0], "model.onnx"), "cpu", "disable", intra_op_threads=1)
    assert device == S.Device("cpu", 0) and session.get_providers() == [S.CPU_PROVIDER]
