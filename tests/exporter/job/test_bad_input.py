"""Bad input gets a one-line error naming the fix, and leaves nothing half-written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from exporter.errors import UserError
from exporter.job.run import run_export
from exporter.options import ExportOptions
from graphs.metadata import ExportError, load_metadata
from tests import tiny_models
from tests.helpers import REPO



def export(tmp_path, **kw):
    kw.setdefault("calib_tokens", 4096)
    kw.setdefault("window", 256)
    return run_export(ExportOptions(out=str(tmp_path / "out"), build_dir=str(tmp_path), **kw))


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    from transformers import BertConfig
    BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="'bert' is not supported; supported: llama, mistral, qwen2, gpt2"):
        export(tmp_path, model=str(tmp_path / "bert"))


@pytest.mark.parametrize("overrides,match", [
    ({"sliding_window": 16}, "sliding_window=16 is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}}, "rope type 'yarn'"),
])
def test_unsupported_variants_are_refused(tmp_path, overrides, match):
    d = tiny_models.make("mistral", str(tmp_path / "m"), **overrides)
    with pytest.raises(UserError, match=match):
        export(tmp_path, model=d)


@pytest.mark.parametrize("k,match", [("999", "K=999 is out of range.*use 1..32 or 'full'"),
                                     ("0", "out of range"), ("nine", "not a number")])
def test_k_out_of_range(tiny_model_dir, tmp_path, k, match):
    with pytest.raises(UserError, match=match):
        export(tmp_path, model=tiny_model_dir("llama"), k=k)


def test_key_ranks_checked_separately(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="K_VALUE=64 is out of range"):
        export(tmp_path, model=tiny_model_dir("llama"), k="8", k_value="64")


def test_too_little_calibration_text(tiny_model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a few words here.")
    with pytest.raises(UserError, match="at least 2048 are needed: pass a longer text file"):
        export(tmp_path, model=tiny_model_dir("llama"), k="8", calib=str(short))
    assert not (tmp_path / "out").exists()


def test_missing_calibration_file(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="no text file at .*CALIB="):
        export(tmp_path, model=tiny_model_dir("llama"), k="8", calib=str(tmp_path / "nope.txt"))


def test_unknown_key_mode(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="KEY_MODE='sideways' is unknown"):
        export(tmp_path, model=tiny_model_dir("llama"), key_mode="sideways")


def test_missing_or_corrupt_export_directory(tiny_export, tmp_path):
    with pytest.raises(ExportError, match="run `make export` first"):
        load_metadata(str(tmp_path / "none"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "export.json").write_text("{not json")
    (broken / "model.onnx").write_bytes(b"")
    with pytest.raises(ExportError, match="corrupt"):
        load_metadata(str(broken))
    os.remove(broken / "model.onnx")
    with pytest.raises(ExportError, match="no model.onnx"):
        load_metadata(str(broken))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("exporter", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: no model directory at")
    assert not (tmp_path / "o").exists()
    for module, extra in (("validate", []), ("runtime", ["--prompt", "hi"])):
        r = _cli(module, "--export", str(tmp_path / "none"), *extra)
        assert r.returncode == 2, (module, r.stderr)
        last = r.stderr.strip().splitlines()
        assert len(last) == 1 and "run `make export` first" in last[0], (module, r.stderr)
