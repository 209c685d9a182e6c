"""The researcher's workbench: compressor lists, byte accounting that adds up to what the
transport counted, comparisons that survive a failed or diverged job, progress off a terminal."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from nina import accounting as acc
from nina.jobmsg import JobAborted, JobDiverged
from nina.procs import REPO
from nina.wire import CAPACITY, Encoding
from worker.compress import CompressorSpecError, split_specs
from worker.train import Diverged, _check_finite

QUIET = lambda *a, **k: None  # noqa: E731


# ---- compressor lists ----

@pytest.mark.parametrize("text,want", [
    ("nat", ["nat"]),
    ("none,int32,nat,nat+cm", ["none", "int32", "nat", "nat+cm"]),
    ("dither_nat:s=4,p=inf", ["dither_nat:s=4,p=inf"]),
    ("nat,dither_nat:s=4,p=inf,int32", ["nat", "dither_nat:s=4,p=inf", "int32"]),
    ("nat;dither_sta:s=8,p=2 ef+topk:k=0.1", ["nat", "dither_sta:s=8,p=2", "ef+topk:k=0.1"]),
    (" nat , int32 ,", ["nat", "int32"]),
])
def test_split_specs_splits_between_specs_not_inside_them(text, want):
    assert split_specs(text) == want


@pytest.mark.parametrize("text", ["", " , ", "s=4,nat", "nat,p=inf"])
def test_split_specs_refuses_parameters_without_a_spec(text):
    with pytest.raises(CompressorSpecError):
        split_specs(text)


def test_train_help_lists_every_compressor_with_its_parameters_and_version():
    p = subprocess.run([sys.executable, "-m", "nina.cli", "train", "--help"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0
    for name in ("dither_nat", "dither_sta", "randk", "nat_randk", "spherical", "powersgd"):
        assert f"    {name}: " in p.stdout
    assert "s=7 (levels" in p.stdout and "1..127)" in p.stdout
    v = subprocess.run([sys.executable, "-m", "nina.cli", "--version"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    from nina import __version__
    assert v.returncode == 0 and v.stdout.startswith(f"nina {__version__}")


# ---- accounting (pure) ----

@pytest.mark.parametrize("enc,cm", [(Encoding.NAT8, False), (Encoding.NAT8, True),
                                    (Encoding.INT32, False)])
@pytest.mark.parametrize("n", [1, 128, 129, 256, 2410, 10_000])
def test_breakdown_adds_up_to_the_packet_sizes(enc, cm, n):
    k = CAPACITY[enc]
    chunks = -(-n // k)
    prim = min(32, chunks)
    results = acc._result_packets(enc, 2 if cm else 0, n, chunks)
    p = acc.breakdown(enc, cm, n, chunks, prim, 3, results + prim + 2)
    up_pkt = 16 + 256
    assert p["up_bytes"] == (chunks + prim + 3) * up_pkt
    assert p["up_payload"] == n * (1 if enc == Encoding.NAT8 else 4)
    down_pkt = 16 + (512 if enc == Encoding.NAT8 and not cm else 256)
    assert p["down_bytes"] == (results + prim + 2) * down_pkt
    assert p["down_payload"] == n * (1 if cm else 4)
    assert min(p.values()) >= 0
    bpe = acc.bits_per_element(p, n)
    assert bpe["up_payload_bits_per_element"] == (8 if enc == Encoding.NAT8 else 32)


def test_priming_share_falls_with_tensor_size():
    small = acc.priming_share(Encoding.NAT8, False, 2410, 32)
    big = acc.priming_share(Encoding.NAT8, False, 1_000_000, 32)
    assert 0.3 < small < 0.5 and big < 0.01


def test_link_bound_is_the_busier_direction_of_whole_frames():
    # 1024 NAT8 elements = 4 chunks, window 2 = 2 priming rounds; a frame is the UDP payload
    # plus 42 bytes of Ethernet, IPv4 and UDP headers
    up = (4 + 2) * (16 + 256 + 42)
    down_sums = (4 * 2 + 2) * (16 + 512 + 42)   # int32 sums come back in two parts
    assert acc.link_bound_seconds(Encoding.NAT8, False, 1024, 2, 1.0) == down_sums * 8 / 1e6
    assert acc.link_bound_seconds(Encoding.NAT8, True, 1024, 2, 1.0) == up * 8 / 1e6
    assert acc.link_bound_seconds(Encoding.NAT8, True, 1024, 2, 10.0) == up * 8 / 1e7
    assert acc.link_bound_seconds(Encoding.INT32, False, 0, 2, 1.0) == 0.0


# ---- divergence and progress ----

def test_non_finite_values_are_reported_as_divergence():
    _check_finite(3, "loss", 1.5)
    with pytest.raises(Diverged, match="loss is inf at step 4"):
        _check_finite(4, "loss", np.inf)
    with pytest.raises(Diverged, match="NaN"):
        _check_finite(5, "the gradient", np.array([1.0, np.nan]))
    assert issubclass(JobDiverged, JobAborted)


def test_progress_to_a_file_writes_plain_periodic_lines():
    from jobs.runner import Progress
    buf = io.StringIO()
    p = Progress(50, "nat x2", QUIET, stream=buf)
    for _ in range(50):
        p.update({"train_loss": 0.5})
    p.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert len(lines) == 10 and lines[-1].startswith("nat x2: step 50/50 (100%)")


# ---- with the switch ----

def test_allreduce_parts_add_up_to_the_transport_counts_under_loss(tmp_path):
    """Real switch process, real workers, 5% loss: every worker's parts add up exactly."""
    from switch.handles import local_switch_unavailable
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    p = subprocess.run([sys.executable, "-m", "nina.cli", "allreduce", "--workers", "2",
                        "--size", "2410", "--calls", "2", "--loss", "0.05",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:] + p.stdout[-2000:]
    assert "bytes by part" in p.stdout and "MISMATCH" not in p.stdout


def test_compare_keeps_the_table_when_a_job_diverges(tmp_path):
    """lsq with random sparsification at a large step size overflows; the nat job's row, the
    table and comparison.csv survive, the randk row says diverged and at which step."""
    from switch.handles import local_switch_unavailable
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    out = tmp_path / "cmp"
    p = subprocess.run([sys.executable, "-m", "nina.cli", "train", "--workers", "2",
                        "--model", "lsq", "--compare", "nat;randk:q=0.05", "--steps", "200",
                        "--out", str(out)], capture_output=True, text=True, timeout=240,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:] + p.stdout[-2000:]
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "diverged"]
    assert "is inf at step" in rows[1]["error"] or "is NaN at step" in rows[1]["error"]
    assert rows[0]["bits_per_element_up"] > 8 and rows[0]["payload_bits_per_element_up"] == 8
    assert "diverged" in p.stdout and (out / "comparison.csv").stat().st_size > 0
    assert "\r" not in p.stderr          # not a terminal: plain progress lines


# ---- nina ctl beside a running rack ----

def test_ctl_finds_a_running_rack_reads_as_backup_and_reads_a_finished_job(tmp_path):
    """A local rack publishes where its switch is; `nina ctl` without --grpc finds it, reads
    as a backup (the rack's controller stays primary), refuses to write with the fix in one
    line, and reads the slots of a job the rack installed and removed (from rack.json)."""
    from switch.handles import local_switch_unavailable
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    from nina import rackinfo
    from nina.config import JobSpec, WorkerAddr
    from topology.local import LocalRack
    run_dir = tmp_path / "rack"

    def ctl(*argv):
        return subprocess.run([sys.executable, "-m", "nina.cli", "ctl", *argv],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    with LocalRack(1, str(run_dir), QUIET, trace=False) as rack:
        rec = rackinfo.load(str(run_dir / "train-9"))        # a job folder finds its rack
        assert rec["grpc"] == rack.switch.grpc_addr and rec["pid"] > 0
        assert any(r["run_dir"] == rec["run_dir"] for r in rackinfo.running())
        spec = JobSpec(job_id=9, n_workers=1, encoding=Encoding.NAT8, slot_base=64,
                       workers=(WorkerAddr(0, "127.0.0.1", 40000),))
        rack.controller.install_job(spec)
        rack.controller.remove_job(9)
        p = ctl("--rack", str(run_dir), "slot", "2", "--job", "9", "--ver", "1")
        assert p.returncode == 0, p.stderr
        assert "job 9 slot 2 ver 1 (register index 133)" in p.stdout
        assert "reads" in p.stderr                              # a backup, and told so
        p = ctl("counters")
        assert p.returncode == 0 and f"P4Runtime {rec['grpc']}" in p.stderr
        p = ctl("fwd", "add", "02:00:00:00:00:09", "3")
        assert p.returncode == 1 and "higher --election-id" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 3
    assert rec["run_dir"] not in [r["run_dir"] for r in rackinfo.running()]
    assert (run_dir / "rack.json").exists()


def test_table_marks_a_job_that_failed_before_any_step():
    """A failed job with no metrics still gets its row and its reason; ratios use the first
    finished job as baseline when the first one failed."""
    from jobs.compare import format_table
    ok = {"compressor": "nat", "path": "switch NAT8", "status": "ok", "bytes_up": 1000,
          "bytes_down": 3000, "bytes_total": 4000, "retransmissions": 0, "steps_to_target": 10,
          "bytes_to_target": 2000, "final_test_accuracy": 0.95, "startup_s": 1.0,
          "train_s": 2.0, "up_payload": 500, "down_payload": 2000,
          "bits_per_element_up": 16.0, "bits_per_element_down": 48.0}
    bad = {"compressor": "randk:q=0.1", "path": "host all-gather of randk:q=0.1",
           "workers": 2, "steps": 0, "status": "failed",
           "error": "worker 1 (pid 7) exited with code 1", "folder": "x"}
    text = format_table([bad, ok], 0.93, "test_accuracy")
    row = next(line for line in text.splitlines() if line.startswith("randk"))
    assert "failed" in row and row.split()[-1] == "-"
    assert "relative to nat" in text
    assert "randk:q=0.1: failed: worker 1 (pid 7) exited with code 1" in text
