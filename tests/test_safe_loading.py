"""Safe loading: no pickle anywhere, no file an export names outside its directory, no remote code unless asked.

The scan reads every Python file of the repository (tests and benchmarks included) for the ways a pickle gets
loaded (`torch.load` without `weights_only=True`, the pickle module, `allow_pickle=True`) and for
`trust_remote_code=True` written into code; the planted lines show each pattern is caught.
"""
from __future__ import annotations

import ast
import os
import re

import numpy as np
import pytest

from tests.helpers import REPO

SCANNED = ("exporter", "graphs", "runtime", "validate", "benchmarks", "tests")


def unsafe_calls(source: str) -> list[str]:
    """What in this source could load a pickle or run a model's own code, one line each."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"imports {n}" for n in names if n and n.split(".")[0] in ("pickle", "dill", "cloudpickle")]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if re.fullmatch(r"(torch\.)?load", name) and name != "load" and keywords.get("weights_only") != "True":
            found.append(f"{name}() without weights_only=True")
        if keywords.get("allow_pickle") not in (None, "False"):
            found.append(f"{name}(allow_pickle={keywords['allow_pickle']})")
        if keywords.get("trust_remote_code") == "True":
            found.append(f"{name}(trust_remote_code=True)")
    return found


def python_files():
    for top in SCANNED:
        for parent, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield from (os.path.join(parent, f) for f in files if f.endswith(".py"))


def test_no_code_in_the_repository_can_load_a_pickle_or_remote_code():
    bad = {os.path.relpath(path, REPO): calls for path in python_files()
           if (calls := unsafe_calls(open(path, encoding="utf-8").read()))}
    assert not bad, bad


@pytest.mark.parametrize("line", [
    "import pickle", "from pickle import loads", "torch.load(path)", "torch.load(path, weights_only=False)",
    "np.load(path, allow_pickle=True)", "AutoModel.from_pretrained(p, trust_remote_code=True)",
])
def test_the_scan_catches_each_pattern(line):
    assert unsafe_calls(line)


def test_the_scan_lets_safe_calls_through():
    assert unsafe_calls("torch.load(path, weights_only=True)\nnp.load(path)\n"
                        "from_pretrained(p, trust_remote_code=options.trust_remote_code)") == []


def test_remote_code_is_off_unless_asked():
    from exporter.analyze.options import AnalyzeOptions
    from exporter.options import ExportOptions
    assert ExportOptions().trust_remote_code is False and AnalyzeOptions().trust_remote_code is False


def test_a_genai_config_naming_a_file_outside_the_export_is_refused(tmp_path):
    import json

    from graphs.metadata import ExportError
    from validate.export_files import check_genai_config
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "../../etc/x.onnx"}}}))

    class Meta:
        extra = {"genai": "genai_config.json written"}
    with pytest.raises(ExportError, match="outside the export directory"):
        check_genai_config(str(tmp_path), Meta())
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    check_genai_config(str(tmp_path), Meta())


def test_external_data_outside_the_export_is_refused(tmp_path):
    """model.onnx whose weights point outside its directory: onnxruntime refuses, the runtime says so in a line."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from graphs.metadata import ExportError
    from runtime.session import open_session
    export = tmp_path / "export"
    export.mkdir()
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    onnx.save(helper.make_model(graph), str(export / "model.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    os.rename(export / "weights.bin", tmp_path / "outside.bin")
    model = onnx.load(str(export / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:      # onnx.save refuses '..': edit it in by hand
        if entry.key == "location":
            entry.value = "../outside.bin"
    onnx.save(model, str(export / "model.onnx"))
    with pytest.raises(ExportError, match="re-export it"):
        open_session(str(export / "model.onnx"))
