"""Runs an export (model.onnx + export.json + tokenizer.json) with onnxruntime: no torch, no transformers.

    from runtime import Generator
    result = Generator("build/latest").generate(["Hello"], max_new_tokens=32)
    print(result.texts[0], result.timings.summary())

Imports only the standard library, numpy, onnxruntime, tokenizers and graphs.contract/graphs.metadata.
"""
from .generator import DEFAULT_EXPORT, Generator
from .result import GenerationResult, Timings

__all__ = ["DEFAULT_EXPORT", "Generator", "GenerationResult", "Timings"]
