"""The files of an export beside export.json and model.onnx, checked whole before anything is measured.

    tokenizer.json          what the runtime encodes prompts with: present and readable
    genai_config.json       when export.json says it was written: present, valid JSON, and every file it names
                            inside the export directory (onnxruntime-genai opens them)
    projectors.safetensors  when export.json records their sha256 (a compressed or quantized cache): present, the
    + projectors.json       very file the export was written with, and of the ranks export.json gives

Whether the projectors were made for the model itself is checked where the model is loaded (reference.py).

Entry point: `check_export_files(export_dir, meta)`; each failure is an ExportError naming the fix.
"""
from __future__ import annotations

import json
import os

from exporter.files import sha256_file
from graphs.genai import GENAI_CONFIG
from graphs.metadata import ExportError, ExportMetadata
from runtime.generator import load_tokenizer

PROJECTORS = "projectors"
REEXPORT = "re-export it with `make export`"


def read_json(path: str):
    """A JSON file's content, or an ExportError saying it is missing or damaged."""
    if not os.path.isfile(path):
        raise ExportError(f"{path} is missing: the export is incomplete, {REEXPORT}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is damaged ({e}): {REEXPORT}") from None


def named_files(config) -> list[str]:
    """Every "filename" value anywhere in a genai config."""
    if isinstance(config, dict):
        return [v for k, v in config.items() if k == "filename" and isinstance(v, str)] + \
            [f for v in config.values() for f in named_files(v)]
    return [f for v in config for f in named_files(v)] if isinstance(config, list) else []


def check_inside(export_dir: str, name: str, source: str) -> None:
    """A file named by one of the export's own files must lie inside the export directory."""
    root = os.path.realpath(export_dir)
    if os.path.commonpath([root, os.path.realpath(os.path.join(root, name))]) != root:
        raise ExportError(f"{source} names {name!r}, outside the export directory: it was edited by hand, "
                          f"{REEXPORT}")


def check_genai_config(export_dir: str, meta: ExportMetadata) -> None:
    """genai_config.json: required where export.json says it was written, valid JSON wherever it is, and naming
    no file outside the export."""
    path = os.path.join(export_dir, GENAI_CONFIG)
    if meta.extra.get("genai") == f"{GENAI_CONFIG} written" or os.path.exists(path):
        for name in named_files(read_json(path)):
            check_inside(export_dir, name, path)


def check_projectors(export_dir: str, meta: ExportMetadata) -> None:
    """The projector pair the export was written with (export.json's sha256), of the ranks export.json gives."""
    if meta.projector_sha256 is None:
        return
    stem = os.path.join(export_dir, PROJECTORS)
    tensors = stem + ".safetensors"
    if not os.path.isfile(tensors):
        raise ExportError(f"{tensors} is missing: the export's cache is coded with it, {REEXPORT}")
    if sha256_file(tensors) != meta.projector_sha256:
        raise ExportError(f"{tensors} is not the file this export was written with (its sha256 differs from "
                          f"export.json's): it was damaged or swapped, {REEXPORT}")
    ranks = read_json(stem + ".json").get("ranks")
    if ranks != meta.ranks:
        raise ExportError(f"export.json's ranks differ from those in {stem}.json: the export was edited by hand, "
                          f"{REEXPORT}")


def check_export_files(export_dir: str, meta: ExportMetadata) -> None:
    load_tokenizer(export_dir)
    check_genai_config(export_dir, meta)
    check_projectors(export_dir, meta)
