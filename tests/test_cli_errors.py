"""User mistakes on the command line (issue 16, items 8-9): one clear error line, never a
traceback, never a silently accepted bad value. Run in-process through nina.cli.main (argparse
errors are SystemExit(2)); the broken pipe case as a real pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nina.cli import main
from nina.decisions import TRACE_DTYPE, Decision
from switch.trace_file import TraceWriter

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines()[-1] if err.strip() else ""


@pytest.mark.parametrize("argv,says", [
    (["allreduce", "--timeout", "0"], "--timeout: 0 must be a number > 0"),
    (["allreduce", "--timeout", "-1"], "--timeout: -1 must be a number > 0"),
    (["allreduce", "--timeout", "nan"], "not a finite number"),
    (["train", "--timeout", "inf"], "not a finite number"),
    (["train", "--lr", "-1"], "--lr: -1 must be a number > 0"),
    (["train", "--lr", "0"], "--lr: 0 must be a number > 0"),
    (["train", "--target", "nan"], "--target: 'nan' is not a finite number"),
    (["train", "--compare", ""], "no compressor given in --compare ''"),
    (["switch", "--grpc", "127.0.0.1:99999"], "port in 1..65535"),
    (["allreduce", "--grpc", "127.0.0.1:0"], "port in 1..65535"),
    (["ctl", "trace-port", "600"], "600 is not a switch port in 0..511"),
    (["ctl", "fwd", "add", "02:00:00:00:00:01", "512"], "512 is not a switch port in 0..511"),
    (["ctl", "slot", "0", "--job", "1", "--acc", "-1"], "--acc: -1 must be >= 0"),
    (["trace", "show", "x", "--slot", "0", "--limit", "-5"], "--limit: -5 must be >= 0"),
    (["rack", "--mode", "local", "--reorder", "50"], "--reorder needs --delay"),
    (["demo", "--compressors", ""], "--compressors '' names no compressor"),
])
def test_bad_values_are_refused_in_one_line(capsys, argv, says):
    rc, line = _run(capsys, *argv)
    assert rc == 2 and says in line, line


@pytest.mark.parametrize("argv", [
    ["allreduce", "--out", "/etc/passwd/x"],
    ["allreduce", "--out", "/proc/nina_x"],
    ["allreduce", "--runs-dir", "/etc/passwd"],
    ["demo", "--mode", "local", "--out", "/etc/passwd/x"],
    ["rack", "--mode", "local", "--run-dir", "/etc/passwd/x", "--run", "quit"],
])
def test_unwritable_output_folders_are_one_line(capsys, argv):
    rc, line = _run(capsys, *argv)
    assert rc == 1 and "error:" in line and ("/etc/passwd" in line or "/proc/nina_x" in line)
    assert "Not a directory" in line or "No such file" in line or "ermission" in line, line


def _trace(path: Path, n: int = 10) -> Path:
    rec = np.zeros(n, TRACE_DTYPE)
    rec["time_ns"] = np.arange(n) * 1000 + 1
    rec["job"], rec["decision"], rec["elements"] = 1, int(Decision.FIRST), 256
    with TraceWriter(path) as w:
        w.write(rec)
    return path


def test_files_that_are_not_traces_are_one_line(capsys, tmp_path):
    noise = tmp_path / "noise.trace"
    noise.write_bytes(np.random.default_rng(0).bytes(32 * 100))
    for argv in (["trace", "summary", "/etc/passwd"], ["trace", "summary", str(noise)],
                 ["trace", "plot", str(noise), "--out", str(tmp_path)],
                 ["trace", "show", str(noise), "--slot", "0"]):
        rc, line = _run(capsys, *argv)
        assert rc == 2 and "is not a NINA switch trace" in line, (argv, line)
    good = _trace(tmp_path / "good.trace")
    (tmp_path / "good.trace.json").write_text("{broken")
    rc, line = _run(capsys, "trace", "summary", str(good))
    assert rc == 2 and "index is unreadable" in line, line


def test_trace_plot_to_an_unwritable_folder_is_one_line(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    good = _trace(tmp_path / "good.trace")
    rc, line = _run(capsys, "trace", "plot", str(good), "--out", "/etc/passwd/x")
    assert rc == 2 and "/etc/passwd/x" in line and "Not a directory" in line, line


def test_output_into_a_closed_pipe_stops_quietly(tmp_path):
    """`nina trace show ... | head -2`: no BrokenPipeError traceback."""
    big = _trace(tmp_path / "big.trace", 20_000)
    p = subprocess.Popen([sys.executable, "-m", "nina.cli", "trace", "show", str(big),
                          "--slot", "0", "--limit", "20000"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    p.stdout.readline()
    p.stdout.close()           # the reader goes away
    err = p.stderr.read().decode()
    p.wait(60)
    p.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert p.returncode == 141
