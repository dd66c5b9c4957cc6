"""Builds what the benchmark needs and is missing, cached under build/bench/ (one-time work):

    hf-smollm2-135m/              save_pretrained of the model exporter.model.load loads (SmolLM2-135M-Instruct, GGUF
                                  dequantized to fp32) + its tokenizer; config.json also carries a top-level
                                  rope_theta and tokenizer_config.json tokenizer_class PreTrainedTokenizerFast,
                                  so transformers 4.57 (the optimum virtualenv) reads it as transformers 5 does
    genai-smollm2-135m-fp32-cpu/  python -m onnxruntime_genai.models.builder -i <hf dir> -o <dir> -p fp32 -e cpu
    optimum-smollm2-135m/         optimum-cli export onnx --task text-generation-with-past (optimum virtualenv)
    ours-<setting>/               exporter.job.run.run_export (calibration statistics cached in build/calib/)
    prompt-ids.json               the sink token id, then WikiText-2 test tokens: the ids every runtime gets
    logs/                         the builders' output

A directory counts as built when it holds `.complete` (written last, with the build time and git commit).
`--rebuild-ours` exports ours again (the graph changes under active development).

    python -m benchmarks.runtime_bench.prepare [--ours full,k128-pre-rope,...] [--only hf,genai,optimum,ours]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

from .common import (BENCH_DIR, BUILD, COMPLETE, GENAI_DIR, HF_DIR, IDS_FILE, LOG_DIR, OPT_PYTHON, OPTIMUM_DIR,
                     REPO, genai_dir, is_built, ours_dir)
from .settings import DEFAULT_OURS, Setting, parse_settings

RUNTIMES = ("hf", "genai", "optimum", "ours")
MAX_IDS = 8192               # prompt ids kept in prompt-ids.json (SmolLM2's max_position_embeddings), sink included
TEXT_CHARS = 200_000         # characters of WikiText-2 test tokenized (~50k tokens, far more than MAX_IDS)
# first-run build times seen on the 2-core machine (s), for the "first run" line; see docs/bench_runtime.md
EXPECTED_S = {"hf": 45, "genai": 15, "optimum": 45, "ours": 60}


class PrepareError(RuntimeError):
    """A build step failed; the message names the step and its log."""


def _git_head() -> str | None:
    """HEAD's short hash, '+dirty' when exporter/, graphs/ or runtime/ have uncommitted changes."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout
        dirty = run("status", "--porcelain", "--", "exporter", "graphs", "runtime").strip()
        return run("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _mark_complete(path: str, t0: float, **info) -> None:
    with open(os.path.join(path, COMPLETE), "w", encoding="utf-8") as f:
        json.dump({"built": datetime.datetime.now().isoformat(timespec="seconds"),
                   "seconds": round(time.time() - t0, 1), "git": _git_head(), **info}, f, indent=1)


def build_info(path: str) -> dict:
    """What `.complete` says about a built directory (build time, git commit), {} if not built."""
    try:
        with open(os.path.join(path, COMPLETE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _fresh_tmp(path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _swap_in(tmp: str, path: str) -> None:
    """Replace path by the finished tmp directory."""
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _run_logged(cmd: list[str], log_name: str, what: str) -> None:
    """Run a builder command with its output in logs/<log_name>; a failure names the step and the log."""
    os.makedirs(LOG_DIR, exist_ok=True)
    log = os.path.join(LOG_DIR, log_name)
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = "".join(l for l in f.readlines() if "it/s]" not in l)[-3000:]   # progress bars left out
        raise PrepareError(f"{what} failed (exit {rc}); full output in {os.path.relpath(log, REPO)}:\n{tail}")


class _Model:
    """exporter.model.load's model, loaded at most once per prepare run (it takes ~25 s)."""

    def __init__(self):
        self._loaded = None

    def get(self):
        if self._loaded is None:
            from exporter.model.load import load
            self._loaded = load(None)
        return self._loaded


def build_hf_dir(model: _Model) -> None:
    """HF safetensors directory of the default model, checked by loading it back with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t0 = time.time()
    loaded = model.get()
    tmp = _fresh_tmp(HF_DIR)
    # the GGUF-loaded model carries a gguf quantization_config and refuses save_pretrained: copy its (already
    # dequantized, fp32) weights into a plain model of the same config
    config = copy.deepcopy(loaded.model.config)      # the loaded model is used again for our exports
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain.load_state_dict(loaded.model.state_dict(), strict=True)
    plain.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    _patch_for_transformers4(tmp)
    back = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    AutoTokenizer.from_pretrained(tmp)
    ids = torch.tensor([[1, 504, 2016, 282, 4457, 314, 260, 1345]])            # (1, 8) any ids
    with torch.inference_mode():
        diff = (back(ids).logits - loaded.model(ids).logits).abs().max().item()
    if diff != 0.0:
        raise PrepareError(f"the saved HF directory {tmp} does not reproduce the loaded model (max |logit diff| "
                           f"{diff:.3g})")
    _mark_complete(tmp, t0, source=loaded.source, check="transformers loads it back, logits identical")
    _swap_in(tmp, HF_DIR)


def _patch_for_transformers4(path: str) -> None:
    """transformers 5 writes rope_theta only inside rope_parameters and tokenizer_class TokenizersBackend;
    transformers 4.57 (optimum's) would silently use rope_theta 10000 and cannot load the tokenizer."""
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    tok_path = os.path.join(path, "tokenizer_config.json")
    with open(tok_path, encoding="utf-8") as f:
        tok = json.load(f)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(tok, f, indent=2)


def build_genai(precision: str = "fp32") -> None:
    """onnxruntime-genai's own builder on the HF directory, CPU: fp32, or int4 weights (its MatMulNBits)."""
    t0 = time.time()
    out = genai_dir(precision)
    tmp = _fresh_tmp(out)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", HF_DIR, "-o", tmp, "-p", precision,
           "-e", "cpu", "-c", os.path.join(BENCH_DIR, "cache", "genai-builder")]
    _run_logged(cmd, "build-genai.log", "onnxruntime-genai's model builder")
    if not os.path.isfile(os.path.join(tmp, "genai_config.json")):
        raise PrepareError(f"the genai builder wrote no genai_config.json into {tmp}")
    _mark_complete(tmp, t0, command=" ".join(cmd[1:]).replace(tmp, "<out>"))
    _swap_in(tmp, out)


def build_optimum() -> None:
    """optimum-onnx's export of the HF directory, run in the optimum virtualenv."""
    if not os.path.isfile(OPT_PYTHON):
        raise PrepareError(f"no optimum virtualenv at {os.path.relpath(OPT_PYTHON, REPO)}: run `make optimum-setup`")
    with open(os.path.join(HF_DIR, "config.json"), encoding="utf-8") as f:
        theta = (json.load(f).get("rope_parameters") or {}).get("rope_theta")
    check = ("import sys; from transformers import AutoConfig; "
             f"c = AutoConfig.from_pretrained({HF_DIR!r}); sys.exit(0 if c.rope_theta == {theta!r} else 1)")
    if theta is not None and subprocess.run([OPT_PYTHON, "-c", check], capture_output=True).returncode != 0:
        raise PrepareError(f"transformers in the optimum virtualenv does not read rope_theta={theta} from "
                           f"{HF_DIR}/config.json: delete {HF_DIR} and run again")
    t0 = time.time()
    tmp = _fresh_tmp(OPTIMUM_DIR)
    cli = os.path.join(os.path.dirname(OPT_PYTHON), "optimum-cli")
    cmd = [cli, "export", "onnx", "--model", HF_DIR, "--task", "text-generation-with-past", tmp]
    _run_logged(cmd, "build-optimum.log", "optimum-cli export onnx")
    if not os.path.isfile(os.path.join(tmp, "model.onnx")):
        raise PrepareError(f"optimum-cli wrote no model.onnx into {tmp}")
    _mark_complete(tmp, t0, command=" ".join(cmd[1:]).replace(tmp, "<out>"))
    _swap_in(tmp, OPTIMUM_DIR)


def build_ours(setting: Setting, model: _Model) -> None:
    """Our export of one setting, via exporter.job.run.run_export; build/latest is left where it pointed."""
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    t0 = time.time()
    out = ours_dir(setting.name)
    latest = os.path.join(BUILD, "latest")
    before = os.readlink(latest) if os.path.islink(latest) else None
    options = {**setting.export_options(), "dtype": "float32"}     # the benchmark compares fp32 graphs
    try:
        run_export(ExportOptions(out=out, **options), model.get())
    finally:
        # run_export points build/latest at its output; put it back, unless someone else moved it meanwhile
        if before is not None and os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(out):
            tmp = f"{latest}.tmp-{os.getpid()}"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(before, tmp)
            os.replace(tmp, latest)
    _mark_complete(out, t0, setting=setting.name, options=options)


def _wanted_ids_header(sink: int) -> dict:
    from exporter.files import sha256_file
    from exporter.options import DEFAULT_EVAL
    return {"source": str(DEFAULT_EVAL), "source_sha256": sha256_file(str(DEFAULT_EVAL)), "text_chars": TEXT_CHARS,
            "tokenizer_sha256": sha256_file(os.path.join(HF_DIR, "tokenizer.json")), "sink_token_id": sink}


def build_ids(settings: list[Setting]) -> None:
    """prompt-ids.json: [sink] + WikiText-2 test tokens (tokenized with the HF directory's tokenizer, no special
    tokens added), MAX_IDS in all; the sink must be what every export of ours puts first."""
    from transformers import AutoTokenizer
    from exporter.calib.text import read_text
    from exporter.calib.tokens import sink_token_id
    tok = AutoTokenizer.from_pretrained(HF_DIR)
    sink = sink_token_id(tok, "auto")
    for s in settings:
        with open(os.path.join(ours_dir(s.name), "export.json"), encoding="utf-8") as f:
            theirs = json.load(f)["sink"]["token_id"]
        if theirs != sink:
            raise PrepareError(f"{ours_dir(s.name)} has sink token {theirs}, the tokenizer's BOS is {sink}: "
                               "rebuild it with --rebuild-ours")
    header = _wanted_ids_header(sink)
    if os.path.isfile(IDS_FILE):
        with open(IDS_FILE, encoding="utf-8") as f:
            old = json.load(f)
        if {k: old.get(k) for k in header} == header and len(old["ids"]) >= MAX_IDS:
            return
    text = read_text(header["source"])[:TEXT_CHARS]
    ids = tok(text, add_special_tokens=False)["input_ids"][:MAX_IDS - 1]
    if len(ids) < MAX_IDS - 1:
        raise PrepareError(f"{header['source']} gave {len(ids)} tokens, {MAX_IDS - 1} are needed")
    data = {**header, "sink_token": tok.convert_ids_to_tokens(sink), "ids": [sink] + ids}
    tmp = IDS_FILE + f".tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, IDS_FILE)


def prepare(settings: list[Setting], only: tuple[str, ...] = RUNTIMES, rebuild_ours: bool = False) -> None:
    """Build whatever the runtimes in `only` need and build/bench/ lacks; says first what it will build."""
    want_ours = settings if "ours" in only else []
    todo = []
    if not is_built(HF_DIR):
        todo.append(("hf", "the HF safetensors directory"))
    if "genai" in only and not is_built(GENAI_DIR):
        todo.append(("genai", "the onnxruntime-genai model"))
    if "optimum" in only and not is_built(OPTIMUM_DIR):
        todo.append(("optimum", "the optimum export"))
    stale = [s for s in want_ours if rebuild_ours or not is_built(ours_dir(s.name))]
    todo += [("ours", f"our export {s.name}") for s in stale if not is_built(ours_dir(s.name))]
    if todo:
        est = sum(EXPECTED_S[k] for k, _ in todo)
        print(f"first run: building {', '.join(w for _, w in todo)} into {os.path.relpath(BENCH_DIR, REPO)}/, "
              f"takes several minutes (about {max(1, round(est / 60))} min on 2 cores)", flush=True)
    if again := [s.name for s in stale if is_built(ours_dir(s.name))]:
        print(f"--rebuild-ours: exporting {', '.join(again)} again (about {EXPECTED_S['ours']} s each)", flush=True)
    os.makedirs(BENCH_DIR, exist_ok=True)
    model = _Model()
    steps = [("hf", lambda: build_hf_dir(model), not is_built(HF_DIR)),
             ("genai", build_genai, "genai" in only and not is_built(GENAI_DIR)),
             ("optimum", build_optimum, "optimum" in only and not is_built(OPTIMUM_DIR))]
    for name, step, needed in steps:
        if needed:
            t0 = time.time()
            print(f"  building {name} ...", flush=True)
            step()
            print(f"  built {name} in {time.time() - t0:.0f} s", flush=True)
    for s in stale:
        t0 = time.time()
        print(f"  exporting ours {s.name} ...", flush=True)
        build_ours(s, model)
        print(f"  built ours {s.name} in {time.time() - t0:.0f} s", flush=True)
    build_ids(want_ours)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runtime_bench.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", default=DEFAULT_OURS)
    p.add_argument("--only", default=",".join(RUNTIMES))
    p.add_argument("--rebuild-ours", action="store_true")
    a = p.parse_args(argv)
    try:
        prepare(parse_settings(a.ours), tuple(a.only.split(",")), a.rebuild_ours)
    except (PrepareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def genai_peer(precision: str = "fp32") -> str:
    """onnxruntime-genai's model of the default model at this precision (fp32, int4; and the HF directory it is
    built from), built when missing; its directory. The peers of benchmarks/batch_decode.py (`make bench-batch`)."""
    if not is_built(genai_dir(precision)):
        if not is_built(HF_DIR):
            build_hf_dir(_Model())
        build_genai(precision)
    return genai_dir(precision)
