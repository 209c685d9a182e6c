"""The rack: launch-mode decision (no root needed), link-shape rules, and, as root with Mininet,
real racks: all-reduces through the switch on veths (clean and 5% lossy links) with exact
results, coordination over TCP through the switch, traces and pcaps, crash recovery, and a
teardown that leaves nothing behind."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from rackcheck import pid_alive, rack_intfs

from topology import modes
from topology.impair import LinkShape, netem_args, nft_loss_rules
from topology.rack import rack_plan, switch_intfs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- no root needed -----------------------------------------------------------------------

def test_auto_falls_back_to_local_without_root_and_says_why():
    d = modes.decide("auto", modes.Facts(is_root=False, mininet_error=None))
    assert d.mode == "local" and not d.error
    assert "falling back to local" in d.reason and "not root" in d.reason
    assert "\n" not in d.reason


def test_auto_falls_back_without_mininet_and_names_the_fix():
    d = modes.decide("auto", modes.Facts(True, "ModuleNotFoundError: No module named "
                                                     "'mininet'"))
    assert d.mode == "local" and "mininet not importable" in d.reason
    assert "apt-get install mininet" in d.reason


def test_auto_picks_mininet_when_possible_and_explicit_mininet_refuses_without_root():
    assert modes.decide("auto", modes.Facts(True, None)).mode == "mininet"
    d = modes.decide("mininet", modes.Facts(False, None))
    assert d.error.startswith("cannot start a Mininet rack") and "not root" in d.error
    assert modes.decide("local", modes.Facts(False, "x")).error == ""


def test_make_rack_without_root_builds_a_local_rack_and_prints_the_reason(monkeypatch):
    from topology import rack_cli as cli
    from topology.local import LocalRack
    monkeypatch.setattr(modes, "probe", lambda: modes.Facts(False, None))
    said = []
    args = argparse.Namespace(mode="auto", workers=3, bw=10.0, delay=0.0, jitter=0.0,
                              loss=1.0, dup=0.0, reorder=0.0, switch="embedded", run_dir=None,
                              no_trace=False, pcap=False)
    rack = cli.make_rack(args, log=said.append)       # not started: no processes
    assert isinstance(rack, LocalRack) and rack.n_workers == 3
    assert any("falling back to local mode" in s and "not root" in s for s in said)
    assert any("ignored" in s for s in said)           # link options have no links to act on
    args.switch = "bmv2"
    with pytest.raises(ValueError, match="needs the Mininet rack"):
        cli.make_rack(args, log=said.append)


def test_rack_cli_rejects_bad_options_in_one_line():
    r = subprocess.run([sys.executable, "-m", "nina.cli", "rack", "--loss", "150"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "not a percentage" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "nina.cli", "rack", "--workers", "40"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "1..32 workers" in r.stderr


def test_plan_ports_follow_interface_order():
    plan = rack_plan(4)
    assert [h.name for h in plan] == ["h1", "h2", "h3", "h4", "hc"]
    assert [h.port for h in plan] == [1, 2, 3, 4, 5]
    assert switch_intfs(4) == [f"s1-eth{p}" for p in range(1, 6)]
    assert len({h.mac for h in plan}) == 5 and plan[-1].ip == "10.0.0.100"
    with pytest.raises(ValueError, match="1..32"):
        rack_plan(33)


def test_link_shape_rules():
    s = LinkShape(bw_mbit=100, delay_ms=2, loss_pct=5, dup_pct=1, reorder_pct=10)
    s.validate()
    assert netem_args(s) == ["delay", "2ms", "loss", "5%", "duplicate", "1%", "reorder", "10%"]
    rules = nft_loss_rules(s, "l1-eth1")
    assert rules[0] == "numgen random mod 1000000 < 50000 counter drop"
    assert rules[1] == 'numgen random mod 1000000 < 10000 counter dup to "l1-eth1"'
    for bad in (LinkShape(loss_pct=100), LinkShape(delay_ms=-1), LinkShape(bw_mbit=0)):
        with pytest.raises(ValueError):
            bad.validate()


# ---- root + Mininet -----------------------------------------------------------------------

def _root_skip_reason() -> str | None:
    facts = modes.probe()
    d = modes.decide("mininet", facts)
    if d.error:
        return d.error
    from topology.mininet_rack import P4INFO_PATH
    if not os.path.exists(P4INFO_PATH):
        return f"no P4Info at {P4INFO_PATH} (p4c output of the P4 program; make p4)"
    return None


root_only = pytest.mark.skipif(_root_skip_reason() is not None,
                               reason=f"Mininet rack unavailable: {_root_skip_reason()}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (processes of other "
                                                          "users, interfaces)")


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _rack_pids(rack) -> list[int]:
    pids = [n.pid for n in rack.net.hosts + rack.net.switches if n.pid]
    pids += [rack.switch.proc.pid] + rack.impairments.pids()
    return pids


def _assert_gone(pids: list[int], netns_before: str) -> None:
    from topology import impair
    from topology.runenv import STATE_FILE
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (rack_intfs(4) or any(pid_alive(p) for p in pids)):
        time.sleep(0.1)
    assert rack_intfs(4) == []
    assert [p for p in pids if pid_alive(p)] == []
    assert _netns() == netns_before
    assert not os.path.exists(STATE_FILE)
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    assert impair.ROOT_NFT_TABLE not in r.stdout


@pytest.mark.root
@root_only
def test_mininet_rack_allreduce_exact_through_the_switch(tmp_path):
    from topology.rack_jobs import run_allreduce
    from topology.mininet_rack import MininetRack
    before = _netns()
    rack = MininetRack(4, LinkShape(), run_dir=str(tmp_path), pcap=True, log=print)
    with rack:
        pids = _rack_pids(rack)
        assert shutil.which("ping"), "no ping: iputils-ping is in the Makefile's APT_PACKAGES"
        ok, tried = rack.pingall()
        assert (ok, tried) == (20, 20)            # plain forwarding by MAC between all hosts
        # clean links: the switch's results and the workers' windows move as GSO frames,
        # and the switch takes the windows whole
        assert rack.switch.command()[-3:] == ["--tx-gso", "15", "--rx-gso"]
        rep = run_allreduce(rack, size=100_000, encoding="nat8", log=print)
        print(rep.summary())
        assert rep.exact, rep.problems
        # every worker joined the coordinator on hc over TCP through the switch, and the
        # switch aggregated: multicast completions and forwarded plain frames were counted
        c = rack.controller.read_counters()
        assert c["COMPLETE"][0] > 0 and c["FORWARDED"][0] > 0, c
        rep2 = run_allreduce(rack, size=5_000, encoding="int32", log=print)
        assert rep2.exact, rep2.problems
        completes = rack.controller.read_counters()["COMPLETE"][0]
        pids += [p.pid for p in rack._procs.values()]
    _assert_gone(pids, before)
    # the workers' windows reached the switch as GSO frames and were cut there (its stop
    # line); the TCP joins through it above needed their checksums completed
    log = (tmp_path / "switch-embedded.log").read_text()
    cut = re.search(r"(\d+) GSO frames received whole", log)
    assert cut and int(cut.group(1)) > 0 and "dropped (not IPv4/UDP" not in log, log[-2000:]
    # tracing is on by default: the switch traced the jobs' rounds, completions included
    from nina.decisions import Decision
    from switch.trace_file import read_all
    recs = read_all(tmp_path / "switch.trace")
    assert (recs["decision"] == Decision.COMPLETE).sum() == completes, \
        "every completion the switch counted is in its trace"
    pcaps = sorted((tmp_path / "pcap").glob("s1-eth*.pcap"))
    assert [p.name for p in pcaps] == [f"s1-eth{i}.pcap" for i in range(1, 6)]
    assert all(p.stat().st_size > 24 for p in pcaps)   # more than the pcap header


@pytest.mark.root
@root_only
def test_lossy_rack_after_a_crash_still_exact_and_leaves_nothing(tmp_path):
    """A rack process that dies without teardown, then a fresh rack with 5% loss per link
    direction: the new rack removes the leftovers, the all-reduce is still exact (the client
    retransmits), and its own teardown leaves nothing behind."""
    from topology.impair import netem_available
    if not netem_available() and shutil.which("nft") is None:
        pytest.skip("no netem in this kernel and no nft (apt-get install nftables): "
                    "cannot make lossy links")
    from topology.rack_jobs import run_allreduce
    from topology.mininet_rack import MininetRack
    before = _netns()
    crash = ("import os, sys\n"
             "from topology.mininet_rack import MininetRack\n"
             "r = MininetRack(4, run_dir=sys.argv[1], log=lambda *a: None)\n"
             "r.start()\n"
             "print(r.switch.proc.pid, flush=True)\n"
             "os._exit(1)\n")
    r = subprocess.run([sys.executable, "-c", crash, str(tmp_path / "crashed")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    orphan = int(r.stdout.split()[0])
    from topology.runenv import STATE_FILE
    assert os.path.exists(STATE_FILE)               # the crashed rack's record is left
    rack = MininetRack(4, LinkShape(loss_pct=5), run_dir=str(tmp_path / "lossy"), log=print)
    with rack:
        pids = _rack_pids(rack)
        # lossy links drop datagrams one by one: nothing moves as GSO frames there
        cmd = rack.switch.command()
        assert rack.tx_gso == 1 and "--tx-gso" not in cmd and "--rx-gso" not in cmd
        rep = run_allreduce(rack, size=20_000, encoding="nat8", log=print)
        print(rep.summary())
        assert rep.exact, rep.problems
        assert rep.retransmissions > 0              # the links did drop packets
        pids += [p.pid for p in rack._procs.values()]
    _assert_gone(pids + [orphan], before)


@pytest.mark.root
@root_only
def test_rack_cli_run_mode(tmp_path):
    if shutil.which("ping") is None:
        pytest.skip("ping not installed (apt-get install iputils-ping)")
    r = subprocess.run([sys.executable, "-m", "nina.cli", "rack", "--mode", "mininet",
                        "--workers", "2", "--run-dir", str(tmp_path), "--run", "hosts",
                        "--run", "pingall", "--run", "allreduce --size 3000 --encoding int32",
                        "--run", "counters", "--run", "slot 0 --job 1 --ver 1"],
                       capture_output=True, text=True, timeout=150, cwd=REPO)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pingall: 6/6 answered" in r.stdout
    assert "EXACT" in r.stdout and "COMPLETE" in r.stdout
    assert "job 1 slot 0 ver 1" in r.stdout
    assert rack_intfs(4) == []


@pytest.mark.root
@needs_root
def test_clean_leftovers_removes_only_recorded_live_processes_and_interfaces(tmp_path):
    from topology.runenv import RackState, clean_leftovers
    ours = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "61"])      # alive, but its command line changed
    subprocess.run(["ip", "link", "add", "ninatst0", "type", "veth", "peer", "name",
                    "ninatst1"], check=True)
    try:
        st = RackState(str(tmp_path / "state.json"))
        st.intfs = ["ninatst0", "s1-eth99"]           # the second one does not exist
        st.add_pid(ours.pid, ["sleep", "60"])
        st.add_pid(other.pid, ["something", "else"])
        st.pids[os.getpid() + 10**6] = "gone"       # a PID that no longer exists
        st.save()
        removed = clean_leftovers(st.path, log=print)
        assert ours.wait(timeout=5) is not None
        assert other.poll() is None                   # not ours any more: left alone
        assert not os.path.exists("/sys/class/net/ninatst0")
        assert f"pid {ours.pid}" in removed and "ninatst0" in removed
        assert not os.path.exists(st.path)
    finally:
        other.kill()
        other.wait()
        subprocess.run(["ip", "link", "del", "ninatst0"], capture_output=True)
