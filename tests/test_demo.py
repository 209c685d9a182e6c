"""`nina demo`: both jobs on one rack, the summary table, and the switch-side outputs (trace,
pcaps) where the run folder says. Short runs: the demo's numbers are not checked here, only
that it reports them and that they come from real traffic."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from nina.procs import REPO
from switch.handles import local_switch_unavailable


def _demo(tmp_path, *extra, timeout=300):
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "nina.cli", "demo", "--workers", "2", "--steps", "12",
           "--out", str(out), "--no-progress", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    print(r.stdout[-4000:], r.stderr[-3000:])
    assert r.returncode == 0
    return r, out


def _check_outputs(r, out):
    head = next(line for line in r.stdout.splitlines() if line.startswith("compressor"))
    for col in ("final acc", "MB up", "MB down", "bit/el up", "retx", "start s", "train s"):
        assert col in head
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()
            if line.split() and line.split()[0] in ("nat", "int32")
            and "switch" in line}
    assert set(rows) == {"nat", "int32"}
    comp = {c["compressor"]: c for c in json.loads((out / "comparison.json").read_text())}
    for name, c in comp.items():     # the table shows the run's numbers
        assert f"{c['bits_per_element_up']:.1f}" in rows[name] and c["packets_up"] > 0
        assert c["train_s"] > 0 and f"{c['train_s']:.1f}" in rows[name]
        assert c["up_payload"] + c["up_priming"] + c["up_headers"] <= c["bytes_up"]
    assert f"run folder: {out}" in r.stdout
    trace = out / "switch.trace"
    assert f"switch trace: {trace}" in r.stdout and trace.stat().st_size > 0
    hint = re.search(r"next: nina trace summary (\S+)", r.stdout)
    assert hint and os.path.samefile(os.path.join(REPO, hint.group(1)), out)
    s = subprocess.run([sys.executable, "-m", "nina.cli", "trace", "summary", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert s.returncode == 0, s.stderr
    jobs = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^job (\d+) \((\S+): [^)]*\): \d+ slots used", s.stdout, re.M)}
    assert set(jobs) >= {1, 2}                  # both jobs went through the same switch
    assert set(jobs.values()) >= {"nat", "int32"}   # named by compressor from the run folder


def test_local_demo_runs_both_jobs_on_one_switch_and_reports_them(tmp_path):
    r, out = _demo(tmp_path, "--mode", "local")
    _check_outputs(r, out)
    if os.geteuid() == 0 and shutil.which("tcpdump"):
        assert (out / "pcap" / "lo.pcap").stat().st_size > 24
        assert "pcaps (the switch's loopback traffic)" in r.stdout
    else:
        assert "pcaps: none" in r.stdout


@pytest.mark.root
def test_mininet_demo_writes_a_pcap_per_switch_port(tmp_path):
    from topology import modes
    d = modes.decide("mininet", modes.probe())
    if d.error:
        pytest.skip(d.error)
    r, out = _demo(tmp_path, "--mode", "mininet")
    _check_outputs(r, out)
    pcaps = sorted(p.name for p in (out / "pcap").glob("*.pcap"))
    assert pcaps == ["s1-eth1.pcap", "s1-eth2.pcap", "s1-eth3.pcap"]   # 2 workers + hc
    assert all((out / "pcap" / p).stat().st_size > 24 for p in pcaps)
    assert "pcaps (one per switch port" in r.stdout
