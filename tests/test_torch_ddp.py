"""PyTorch DDP through the switch: exact integer sums via INT32 (torchrun, rank 0 installs),
identical parameters, a digits job through NAT8 reaching a stated accuracy, a dead rank ending
the job with a clear error. Skips when torch is not installed (pip install -e '.[torch]')."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")

from jobs.torch_job import format_torch_table, run_torch_training  # noqa: E402
from nina.jobmsg import JobAborted  # noqa: E402
from nina.procs import REPO, free_port, stop_process  # noqa: E402
from switch.handles import local_switch_unavailable  # noqa: E402
from worker.torch_ddp import BucketTime, TorchConfig, lr_at, split_step  # noqa: E402
from worker.torch_names import comm_name  # noqa: E402


# ---- pieces -----------------------------------------------------------------------------------

def test_split_step_counts_only_comm_during_backward_as_overlap():
    # backward computes 0..10; bucket 1 runs 2..6 (hidden), bucket 2 runs 9..13 (1 s hidden)
    b = [BucketTime(ready=1, start=2, end=6, elements=10),
         BucketTime(ready=10, start=9, end=13, elements=10)]
    comm, exposed, overlap = split_step(b, bwd_start=0, bwd_end=13.5)
    assert comm == 8 and exposed == 3.5
    assert overlap == pytest.approx(4 / 8 + 1 / 8)


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = TorchConfig(lr=0.1, steps=100, warmup=0.1)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3


def test_comm_names():
    assert comm_name("nat") == "nat8" and comm_name("nat8+cm") == "nat8+cm"
    with pytest.raises(ValueError, match="no torch path"):
        comm_name("topk:k=0.1")


# ---- torchrun against a running switch: rank 0 installs, INT32 sums are exact -----------------

@pytest.fixture(scope="module")
def switch_process(tmp_path_factory):
    """`nina switch --mode local` on its own, with no controller in this process (rank 0's
    controller installs the job, as with a switch someone else runs)."""
    why = local_switch_unavailable()
    if why:
        print(f"SKIP reason: {why}")
        pytest.skip(why)
    udp, grpc = free_port(socket.SOCK_DGRAM), free_port()
    log = open(tmp_path_factory.mktemp("sw") / "switch.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "nina.cli", "switch", "--mode", "local",
                          "--listen", f"127.0.0.1:{udp}", "--grpc", f"127.0.0.1:{grpc}"],
                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", grpc), timeout=0.5).close()
            break
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, "switch did not start"
            time.sleep(0.2)
    yield ("127.0.0.1", udp), f"127.0.0.1:{grpc}"
    stop_process(p)
    log.close()


def _torchrun(args, n, out, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
           "--master-port", str(free_port()), "-m", "jobs.torch_rank", *args, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_torchrun_int32_hook_sums_integer_gradients_exactly(switch_process, tmp_path):
    (ip, udp), grpc = switch_process
    r = _torchrun(["--task", "check", "--comm", "int32", "--switch", f"{ip}:{udp}",
                   "--grpc", grpc, "--job-id", "7"], 2, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = [json.load(open(tmp_path / f"rank{k}.check.json")) for k in range(2)]
    for x in res:
        assert x["exact"], x["problems"]
        assert x["identical_on_all_ranks"]
    assert res[0]["params_hash"] == res[1]["params_hash"]
    assert "bit for bit" in r.stdout


def test_torchrun_check_tells_nat8_is_not_exact(switch_process, tmp_path):
    """The check can fail: natural compression rounds integers to powers of two."""
    (ip, udp), grpc = switch_process
    r = _torchrun(["--task", "check", "--comm", "nat8", "--switch", f"{ip}:{udp}",
                   "--grpc", grpc, "--job-id", "8"], 2, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(tmp_path / "rank0.check.json"))
    assert not res["exact"] and res["identical_on_all_ranks"]


# ---- the runner (nina train --framework torch) ------------------------------------------------

def test_digits_ddp_through_nat8_reaches_accuracy(switch, tmp_path):
    cfg = TorchConfig(model="digits", comm="nat8", steps=100, lr=0.1, eval_every=25)
    out = run_torch_training(cfg, 2, switch, run_dir=str(tmp_path), job_id=21)
    assert out.summary["final_test_accuracy"] >= 0.85, out.summary
    assert len({f["params_hash"] for f in out.finals}) == 1
    assert out.summary["bytes_up"] > 0 and out.summary["steps"] == 100
    assert all(r["buckets"] >= 2 for r in out.records[1:])   # several buckets per step
    print(format_torch_table([{**out.summary, "steps_to_target": None,
                               "seconds_to_target": None, "bytes_to_target": None}], 0.85))


def test_dead_rank_ends_the_job_with_a_clear_error(switch, tmp_path):
    cfg = TorchConfig(model="digits", comm="nat8", steps=2000, lr=0.1, eval_every=1000,
                      timeout=30.0)
    killed = {}

    def kill_rank1(procs, run_dir):
        path = os.path.join(run_dir, "rank0.jsonl")
        if "t" not in killed and os.path.exists(path) and \
                sum(1 for _ in open(path)) >= 5:
            procs[1].send_signal(signal.SIGKILL)
            killed["t"] = time.monotonic()

    with pytest.raises(JobAborted, match=r"rank 1 exited with signal 9"):
        run_torch_training(cfg, 2, switch, run_dir=str(tmp_path), job_id=22,
                           on_poll=kill_rank1)
    took = time.monotonic() - killed["t"]
    assert took < 25, f"the job took {took:.1f} s to end after the kill"
    log0 = open(tmp_path / "rank0.log").read()
    assert "jobs.torch_rank: error: rank 0:" in log0 and "rank 1 exited" in log0, log0[-1500:]
