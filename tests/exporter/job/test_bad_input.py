"""Refusals of the export job beside the bad-input matrix (tests/test_bad_input.py, which has the rows of every
command): architectures and variants the decoder does not implement, and export.json unreadable."""
from __future__ import annotations

import os

import pytest

from exporter.errors import UserError
from exporter.job.run import run_export
from exporter.options import ExportOptions
from graphs.metadata import ExportError, load_metadata
from validate import tiny_models


def export(tmp_path, **kw):
    kw.setdefault("calib_tokens", 4096)
    kw.setdefault("window", 256)
    return run_export(ExportOptions(out=str(tmp_path / "out"), build_dir=str(tmp_path), **kw))


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    from transformers import BertConfig
    BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="'bert' is not supported; supported: llama, mistral, qwen2, qwen3, phi3, "
                                        "smollm3, gemma3_text, gpt2"):
        export(tmp_path, model=str(tmp_path / "bert"))


@pytest.mark.parametrize("overrides,match", [
    ({"sliding_window": 1}, "sliding_window=1 sees no earlier token: use a window of 2 or more"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}}, "rope type 'yarn'"),
])
def test_unsupported_variants_are_refused(tmp_path, overrides, match):
    d = tiny_models.make("mistral", str(tmp_path / "m"), **overrides)
    with pytest.raises(UserError, match=match):
        export(tmp_path, model=d)


def test_multimodal_and_softcapped_gemma_are_refused(tmp_path):
    from transformers import Gemma3Config
    Gemma3Config().save_pretrained(tmp_path / "gemma3")               # the vision tower beside the decoder
    with pytest.raises(UserError, match="multimodal .* export its text-only checkpoint"):
        export(tmp_path, model=str(tmp_path / "gemma3"))
    d = tiny_models.make("gemma3", str(tmp_path / "g"), final_logit_softcapping=30.0)
    with pytest.raises(UserError, match="final_logit_softcapping=30.0 is not supported"):
        export(tmp_path, model=d)


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
