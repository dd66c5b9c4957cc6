"""--out never deletes what is not an earlier export: the check, and the export run that relies on it."""
from __future__ import annotations

import os

import pytest

from exporter.errors import UserError
from exporter.export.directory import check_out_dir, is_export


def test_new_paths_and_earlier_exports_pass_anything_else_is_refused(tmp_path, tiny_export):
    check_out_dir(str(tmp_path / "new"))
    earlier = tiny_export("llama", "full")
    assert is_export(earlier)
    check_out_dir(earlier)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier export"):
        check_out_dir(str(tmp_path / "precious"))
    (tmp_path / "file").write_text("keep me too")
    with pytest.raises(UserError, match="is a file that is not an earlier export"):
        check_out_dir(str(tmp_path / "file"))


def test_an_export_into_a_directory_of_other_files_is_refused_and_leaves_it_alone(tmp_path, tiny_model_dir):
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier export"):
        run_export(ExportOptions(model=tiny_model_dir("llama"), k="full", out=str(out), build_dir=str(tmp_path)))
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in os.listdir(tmp_path) if p.startswith("precious.")]        # no temporary left behind
