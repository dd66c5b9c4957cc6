"""The export directory: written to a temporary directory and renamed into place only when complete.

    <out>/model.onnx, export.json, tokenizer.json (+ tokenizer_config.json), genai_config.json (when genai can
    run the layout), projectors.safetensors + projectors.json (compressed exports)

The files are written to a hidden `.<name>.partial-<pid>` beside out_dir, export.json last, and swapped in with
one atomic exchange (renameat2 RENAME_EXCHANGE; two renames where the file system has no exchange), so a kill
at any point leaves either the earlier export or the new one at out_dir, never a mix, and never a directory
that looks complete. `--out` may name a new path or an earlier export (its export.json says so), which is
replaced; anything else that exists there is refused, never deleted. `<build>/latest` points at the newest
export. The writer holds out_dir's lock throughout (export/claim.py).

Entry points: `check_out_dir(out)`, `save_export(...)`, `point_latest(out, build_dir)`.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil

from graphs.genai import write_genai_config
from graphs.metadata import FORMAT, METADATA_FILE, MODEL_FILE, TOKENIZER_FILE, ExportMetadata

from ..codec.store import save_projectors
from ..errors import UserError
from .claim import hidden_sibling
from .onnx_file import write_onnx


def is_export(path: str) -> bool:
    """Whether `path` is a directory holding an earlier export (its export.json names our format)."""
    try:
        with open(os.path.join(path, METADATA_FILE)) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out_dir: str) -> None:
    """Refuse an output path that holds something other than an earlier export: it would be replaced."""
    if os.path.lexists(out_dir) and not is_export(out_dir):
        what = "a directory" if os.path.isdir(out_dir) else "a file"
        raise UserError(f"--out {out_dir} is {what} that is not an earlier export; it would be replaced: "
                        "pass a new path, or move it away first")


def save_export(decoder, meta: ExportMetadata, tokenizer, out_dir: str, projectors=None, write_model=None) -> str:
    """Write model.onnx, tokenizer.json, the projectors and export.json (last) to a hidden partial directory, then
    swap it in at out_dir, so an interrupted export leaves nothing half-written. Returns out_dir.
    write_model(path, props): how model.onnx is written, when not traced from `decoder` (export/pieces.py)."""
    out_dir = os.path.normpath(out_dir)
    tmp = hidden_sibling(out_dir, "partial", os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        props = {"format": "spectral-kv", "key_mode": meta.key_mode,
                 "kv_bytes_per_token": str(meta.kv_bytes_per_token), "model": meta.model.get("source", "")}
        if write_model is None:
            write_onnx(decoder, meta.layout, os.path.join(tmp, MODEL_FILE), props, meta.kernels)
        else:
            write_model(os.path.join(tmp, MODEL_FILE), props)
        tokenizer.save_pretrained(tmp)          # tokenizer.json (our runtime) + tokenizer_config.json (genai)
        assert os.path.isfile(os.path.join(tmp, TOKENIZER_FILE))
        if projectors is not None:
            meta.projector_sha256 = save_projectors(projectors, os.path.join(tmp, "projectors"))
        meta.extra["genai"] = write_genai_config(tmp, meta) or "genai_config.json written"
        meta.save(tmp)
        assert os.path.isfile(os.path.join(tmp, METADATA_FILE))
        check_out_dir(out_dir)                  # again: something may have appeared there meanwhile
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def swap_in(new_dir: str, out_dir: str) -> None:
    """Put new_dir at out_dir; an earlier export there is swapped out in the same step and then deleted."""
    if not os.path.lexists(out_dir):
        os.rename(new_dir, out_dir)
    elif exchange(new_dir, out_dir):
        shutil.rmtree(new_dir)                  # holds the earlier export now
    else:
        old = hidden_sibling(out_dir, "replaced", os.getpid())
        os.rename(out_dir, old)                 # a kill right here leaves the earlier export in `old`
        os.rename(new_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), b)


def point_latest(out_dir: str, build_dir: str) -> None:
    """<build_dir>/latest -> the newest export (relative when the export is inside build_dir), replaced
    atomically."""
    os.makedirs(build_dir, exist_ok=True)
    link = os.path.join(build_dir, "latest")
    target = os.path.relpath(os.path.abspath(out_dir), os.path.abspath(build_dir))
    if target.startswith(".."):
        target = os.path.abspath(out_dir)
    tmp = link + f".tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
