"""A real export killed at a few points (SIGINT, SIGKILL) leaves build/latest and every earlier export as they
were and no directory that looks complete; two exports to one --out cannot both write it."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from exporter.errors import UserError
from exporter.export.claim import claim_out_dir, hidden_sibling
from tests.helpers import CALIB_TOKENS, REPO

TIMEOUT_S = 120


def export_command(model: str, out: str) -> list[str]:
    return [sys.executable, "-m", "exporter", "--model", model, "--k", "4", "--calib-tokens", str(CALIB_TOKENS),
            "--window", "256", "--out", out]


class Export:
    """A `python -m exporter` child whose output (progress bars included) is collected as it comes."""

    def __init__(self, command: list[str], cwd: str):
        env = {**os.environ, "PYTHONPATH": REPO}
        # A shell that starts the tests in the background ignores SIGINT, and a child inherits that (Python
        # then never raises KeyboardInterrupt): give the export the default disposition a terminal gives it.
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.output = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.output += chunk

    def wait_for(self, ready) -> None:
        """Poll until ready() holds; fail if the export ends first (the kill point was never reached)."""
        deadline = time.time() + TIMEOUT_S
        while not ready():
            assert self.proc.poll() is None, f"export ended before the kill point:\n{self.output.decode()[-2000:]}"
            assert time.time() < deadline, "kill point not reached in time"
            time.sleep(0.005)

    def finish(self) -> int:
        rc = self.proc.wait(TIMEOUT_S)
        self.reader.join(10)
        return rc


def snapshot(root: str) -> dict[str, str]:
    """Every visible path under root but the statistics cache (calib/, which an export may fill before it is
    killed) -> sha256 of its bytes (a link -> its target)."""
    seen = {}
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (parent == root and d == "calib")]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(parent, d))]:
            path = os.path.join(parent, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                seen[rel] = "-> " + os.readlink(path)
            elif not name.startswith("."):
                with open(path, "rb") as f:
                    seen[rel] = hashlib.sha256(f.read()).hexdigest()
    return seen


def hidden_entries(root: str, out: str = "") -> list[str]:
    """Hidden names in root (of one --out's writers when out is given)."""
    prefix = f".{os.path.basename(out)}." if out else "."
    return sorted(n for n in os.listdir(root) if n.startswith(prefix))


@pytest.fixture(scope="module")
def workspace(tiny_model_dir, tmp_path_factory):
    """A working directory whose build/ holds one finished export, `earlier`, which build/latest points at."""
    cwd = str(tmp_path_factory.mktemp("crash"))
    model = tiny_model_dir("llama")
    done = Export(export_command(model, "build/earlier"), cwd)
    assert done.finish() == 0, done.output.decode()[-2000:]
    return cwd, model


PROGRESS = {"calibrating": lambda e, cwd, out: b"calibrating" in e.output,
            "writing": lambda e, cwd, out: os.path.isdir(os.path.join(cwd, hidden_sibling(out, "partial",
                                                                                            e.proc.pid)))}


@pytest.mark.parametrize("point, sig, out", [
    ("calibrating", signal.SIGINT, "build/earlier"),
    ("calibrating", signal.SIGKILL, "build/new"),
    ("writing", signal.SIGINT, "build/earlier"),
    ("writing", signal.SIGKILL, "build/earlier"),
    ("writing", signal.SIGKILL, "build/new"),
])
def test_a_killed_export_leaves_earlier_exports_and_latest_untouched(workspace, point, sig, out):
    cwd, model = workspace
    build = os.path.join(cwd, "build")
    if point == "calibrating":                  # no cached statistics: the export has to calibrate
        shutil.rmtree(os.path.join(build, "calib"), ignore_errors=True)
    before = snapshot(build)
    assert before["latest"] == "-> earlier"
    export = Export(export_command(model, out), cwd)
    out_abs = os.path.join(cwd, out)
    export.wait_for(lambda: PROGRESS[point](export, cwd, out_abs))
    export.proc.send_signal(sig)
    assert export.finish() != 0
    assert snapshot(build) == before            # nothing visible changed: no new directory, earlier bytes intact
    if sig == signal.SIGINT:                    # cleaned up on the way out: no partial directory, no lock
        assert hidden_entries(build, out) == [], hidden_entries(build, out)
        assert b"Traceback" not in export.output, export.output.decode()[-2000:]
    else:                                       # a kill leaves hidden leftovers, named so; the next export clears them
        assert all(".partial-" in n or n.endswith(".lock") for n in hidden_entries(build)), hidden_entries(build)


def test_the_next_export_clears_what_killed_ones_left(workspace):
    cwd, model = workspace
    build = os.path.join(cwd, "build")
    export = Export(export_command(model, "build/earlier"), cwd)
    export.wait_for(lambda: PROGRESS["writing"](export, cwd, os.path.join(build, "earlier")))
    export.proc.send_signal(signal.SIGKILL)
    export.finish()
    assert any(".earlier.partial-" in n for n in hidden_entries(build))
    again = Export(export_command(model, "build/earlier"), cwd)
    assert again.finish() == 0, again.output.decode()[-2000:]
    assert not [n for n in hidden_entries(build) if n.startswith(".earlier.")], hidden_entries(build)


def test_a_second_export_to_the_same_out_is_refused_while_the_first_writes(workspace):
    """The first writer is this test process, holding --out's lock as an export does from the moment its --out is
    known (a second real export cannot be timed to overlap it reliably on a busy machine)."""
    cwd, model = workspace
    out = os.path.join(cwd, "build", "busy")
    with claim_out_dir(out):
        second = Export(export_command(model, out), cwd)
        assert second.finish() == 2
    assert b"another export is writing it now" in second.output and b"Traceback" not in second.output
    assert not os.path.exists(out)
    third = Export(export_command(model, out), cwd)          # free again once the first is done
    assert third.finish() == 0, third.output.decode()[-2000:]
    assert os.path.isfile(os.path.join(out, "export.json"))


def test_the_lock_refuses_a_second_holder_and_is_gone_after(tmp_path):
    out = str(tmp_path / "x")
    with claim_out_dir(out):
        with pytest.raises(UserError, match="another export is writing it now"):
            with claim_out_dir(out):
                pass
    assert os.listdir(tmp_path) == []
    with claim_out_dir(out):                    # free again
        pass


def test_an_out_in_a_read_only_directory_is_refused(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, 0o555)
    if os.geteuid() == 0:       # root writes through file modes; /sys refuses even root
        read_only = "/sys"
    with pytest.raises(UserError, match="cannot write in"):
        with claim_out_dir(os.path.join(read_only, "x")):
            pass
