"""The headline measurements as one markdown report: bench/REPORT.md (+ PNG plots next to it).

    python bench/report.py [--size 1048576] [--steps 150] [--quick] [--out bench/REPORT.md]

Sections (each a table of ratios against a baseline measured in the same run):
1. embedded switch packet rate vs a bare reflector (bench/switch.py), and its per-packet
   algorithm alone in process (bench/switch_kernel.py);
2. all-reduce time of one tensor on 4 workers: INT32, NAT8, NAT8 + C_M through the switch and
   a host ring all-reduce of float32 (worker/ring.py) over the same network. On the Mininet
   rack (root, P4Info present) the links are shaped to --bw Mbit/s; otherwise the same
   processes run on loopback (unshaped; the report says so);
3. time to accuracy of the same training job per compressor (bench/train.py);
4. the poster's table: bits per element on the wire and omega, measured and bound
   (bench/compress.py);
5. all-reduce time vs loss rate with retransmission counts;
6. local mode end to end: `nina allreduce` beside a loopback echo bound with the same packets
   (bench/local_allreduce.py);
7. the rack sweep: 4M elements at 100 Mbit/s and 1 Gbit/s, 4 and 8 workers, each method beside
   its link-bound time and the ring (bench/rack_allreduce.py);
8. memory of a 16M-element all-reduce: the switch's resident set over the job and the workers'
   extra memory per call (bench/memory.py).
With --sections, only those sections are measured; the others keep their text from the report
already at --out (each section says when it was measured).
Progress goes to stderr; `make bench` runs this script. NINA_BMV2_PERF=PATH adds a
performance build of simple_switch_grpc to section 1's BMv2 table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.allreduce_net import Net  # noqa: E402
from nina.wire import Encoding  # noqa: E402

PY = sys.executable
# BMv2's performance build for section 1's BMv2 table, when this machine has one
BMV2_PERF = ["--bmv2-perf", os.environ["NINA_BMV2_PERF"]] if os.environ.get("NINA_BMV2_PERF") \
    else []
TRAIN_COMPRESSORS = ["none", "int32", "nat", "nat+cm", "dither_nat:s=7", "ef+topk:k=0.01"]  # no commas: bench/train.py splits on them
POSTER_OPS = ["none", "nat", "nat9", "dither_nat:s=7,p=inf", "dither_sta:s=7,p=2",
              "randk:q=0.01", "topk:k=0.01", "nat_randk:q=0.01", "ef+topk:k=0.01"]


def log(msg: str) -> None:
    print(f"[report] {msg}", file=sys.stderr, flush=True)


def run_script(args: list[str], timeout: float) -> str:
    """stdout of a bench script (its progress goes to our stderr)."""
    log("running " + " ".join(args))
    r = subprocess.run([PY, *args], cwd=REPO, stdout=subprocess.PIPE, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        return f"(failed with exit code {r.returncode})\n{r.stdout}"
    return r.stdout.strip()


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load average at start "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def bar_plot(path: Path, labels, values, ylabel, title) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, values, color="#4a7ab0")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section_allreduce(net: Net, size: int, out_dir: Path) -> str:
    rows = []
    for label, enc, cm in (("INT32", Encoding.INT32, False), ("NAT8", Encoding.NAT8, False),
                           ("NAT8 + C_M", Encoding.NAT8, True)):
        log(f"all-reduce {label} of {size} elements")
        t, retx, exact = net.allreduce(size, enc, cm)
        rows.append((label, t, retx, "exact" if exact else "WRONG"))
    log(f"ring all-reduce of {size} float32")
    rows.append(("ring float32 (TCP)", net.ring(size), 0, "float sum"))
    t_int, t_ring = rows[0][1], rows[3][1]
    lines = ["| method | time per all-reduce (s) | x INT32 | x ring | retransmissions | check |",
             "|---|---:|---:|---:|---:|---|"]
    for label, t, retx, chk in rows:
        lines.append(f"| {label} | {t:.3f} | {t / t_int:.2f} | {t / t_ring:.2f} | {retx} | "
                     f"{chk} |")
    nat = rows[1][1]
    lines.append("")
    lines.append(f"Targets: NAT8 <= 0.3 x INT32 (measured {nat / t_int:.2f}: "
                 f"{'met' if nat / t_int <= 0.3 else 'NOT met'}), NAT8 <= 0.2 x ring "
                 f"(measured {nat / t_ring:.2f}: {'met' if nat / t_ring <= 0.2 else 'NOT met'}).")
    bar_plot(out_dir / "allreduce.png", [r[0] for r in rows], [r[1] for r in rows],
             "seconds per all-reduce", f"all-reduce of {size} elements, {net.n} workers")
    return "\n".join(lines) + "\n\n![all-reduce times](allreduce.png)\n"


def section_loss(net: Net, size: int, out_dir: Path) -> str:
    rows = []
    for p in (0.0, 0.001, 0.01, 0.05):
        log(f"loss sweep: NAT8 at loss {p:g}")
        t, retx, exact = net.allreduce(size, Encoding.NAT8, False, loss=p)
        rows.append((p, t, retx, exact))
    t0 = rows[0][1]
    lines = ["| loss rate | time per all-reduce (s) | x lossless | retransmissions | check |",
             "|---:|---:|---:|---:|---|"]
    for p, t, retx, exact in rows:
        lines.append(f"| {p * 100:g}% | {t:.3f} | {t / t0:.2f} | {retx} | "
                     f"{'exact' if exact else 'WRONG'} |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [f"{p * 100:g}%" for p, *_ in rows]
    ax.plot(xs, [r[1] for r in rows], "o-", label="seconds")
    ax.set_ylabel("seconds per all-reduce")
    ax2 = ax.twinx()
    ax2.bar(xs, [r[2] for r in rows], alpha=0.3, color="gray", label="retransmissions")
    ax2.set_ylabel("retransmissions (all workers)")
    ax.set_xlabel("update loss rate")
    ax.set_title(f"NAT8 all-reduce of {size} elements vs loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines) + "\n\n![loss sweep](loss.png)\n"


def section_train(args, out_dir: Path) -> str:
    text = run_script(["bench/train.py", "--seeds", "1", "--steps", str(args.steps),
                       "--compressors", ",".join(TRAIN_COMPRESSORS)], timeout=3600)
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if parts and any(parts[0] == c for c in TRAIN_COMPRESSORS):
            nums = []
            for p in parts[1:]:
                try:
                    nums.append(float(p.rstrip("x")))
                except ValueError:
                    pass
            if nums:
                rows.append((parts[0], nums))
    if rows:
        try:
            bar_plot(out_dir / "train.png", [r[0] for r in rows], [r[1][0] for r in rows],
                     "steps to target (first column)", "time to accuracy per compressor")
            text += "\n\n![time to accuracy](train.png)"
        except Exception as e:   # the table is the result; the plot is a bonus
            log(f"train plot skipped: {e}")
    return "```\n" + text + "\n```\n" if "![" not in text else \
        "```\n" + text.split("\n\n![")[0] + "\n```\n\n![" + text.split("\n\n![")[1] + "\n"


COMPANIONS = """## Other measurements (their own scripts, their own reports)

- Link emulation, configured vs measured (delay, jitter, bandwidth, loss, duplication, reorder):
  `bench/links.py`, report in [links.md](links.md).
- The seed poster's table (bits per iteration, iterations to target, speedup per operator) on
  loopback and on the Mininet rack: `bench/poster.py`, report in [poster.md](poster.md).
- PyTorch DDP through the switch (Gloo vs INT32 vs NAT8 vs NAT8+C_M, MNIST-1D CNN and
  ResNet-20 on the rack): `bench/torch_train.py`, report in [torch_results.md](torch_results.md).
- Decentralized training (consensus and ring-of-8 training: exact gossip, PowerGossip,
  Choco-SGD, all-reduce): `bench/gossip.py`, report in [gossip.md](gossip.md).
- The data plane's latency under P4Runtime abuse (big and wildcard reads, idle streams):
  `bench/p4rt_abuse.py`.
"""


SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8")


def section_number(part: str) -> str | None:
    """'3' for a part that starts '## 3. ...'; None for the title and the other parts."""
    if part.startswith("## ") and "." in part[3:6]:
        return part[3:].split(".", 1)[0]
    return None


def keep_unmeasured(out: Path, parts: list[str], want: set[str]) -> list[str]:
    """The new title and sections, with every section not measured this time kept from the
    report already at `out`, in section order (when it has them)."""
    old = {}
    if out.exists():
        chunks = out.read_text().split("\n## ")
        for c in chunks[1:]:
            num = section_number("## " + c)
            if num is not None:
                old[num] = ("## " + c).split("\n## Other measurements")[0].split(
                    "\n_Report generated")[0].rstrip() + "\n"
    stamp = f"_Measured {datetime.datetime.now():%Y-%m-%d %H:%M}._"
    new = {section_number(p): _stamped(p, stamp) for p in parts[1:]}
    earlier = "_Measured by an earlier run of this report (before sections carried dates)._"
    keep = [new.get(n) or (_stamped(old[n], earlier) if n in old and n not in want else None)
            for n in SECTIONS]
    return [parts[0], *[k for k in keep if k]]


def _stamped(part: str, stamp: str) -> str:
    """A section with the line that says when it was measured (kept if it has one)."""
    head, _, body = part.partition("\n")
    if body.lstrip().startswith("_Measured "):
        return part
    return f"{head}\n\n{stamp}\n{body}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1 << 20,
                    help="all-reduce elements (default 2^20; the issue's 4M = 4194304)")
    ap.add_argument("--loss-size", type=int, default=1 << 18, help="loss sweep elements")
    ap.add_argument("--steps", type=int, default=150, help="training steps per compressor")
    ap.add_argument("--bw", type=float, default=100.0, help="rack link Mbit/s (Mininet only)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", default=str(REPO / "bench" / "REPORT.md"))
    ap.add_argument("--sections", default="1,2,3,4,5,6,7,8",
                    help="which sections to measure (default all); the others keep their text "
                         "from the existing --out report")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.loss_size, args.steps = 1 << 16, 1 << 15, 40
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    want = set(args.sections.split(","))
    if not want <= set(SECTIONS):
        ap.error(f"--sections: choose from {','.join(SECTIONS)}, got {args.sections!r}")
    t_start = time.monotonic()
    parts = [f"# NINA headline measurements\n\nGenerated by `bench/report.py` "
             f"(`make bench`); section{'s' if len(want) > 1 else ''} "
             f"{','.join(sorted(want))} measured on "
             f"{datetime.datetime.now():%Y-%m-%d %H:%M}.\n\n"
             f"Machine: {machine()}.\n"]
    if "1" in want:
        parts.append("## 1. Embedded switch packet rate vs a bare reflector\n\n```\n" +
                     run_script(["bench/switch.py", "--packets", "8000", "--repeat", "3",
                                 "--workers", "4", *BMV2_PERF], 1800) + "\n```\n\n"
                     "The per-packet algorithm alone, in process (bench/switch_kernel.py):"
                     "\n\n```\n" + run_script(["bench/switch_kernel.py", "--passes", "10"], 600)
                     + "\n```\n")
    net = None
    try:
        if "2" in want or "5" in want:
            net = Net(4, args.bw, tempfile.mkdtemp(prefix="nina-report-"))
        if "2" in want:
            note = "" if args.size == 1 << 22 else \
                (f" (the issue asks for 4M = 4194304 elements; {args.size} are used here to "
                 f"keep `make bench` short on this machine: run with --size 4194304 for 4M)")
            parts.append(f"## 2. All-reduce of {args.size} elements{note}\n\nNetwork: "
                         f"{net.where}.\n\n" + section_allreduce(net, args.size, out.parent))
        if "3" in want:
            parts.append("## 3. Time to accuracy\n\n" + section_train(args, out.parent))
        if "4" in want:
            parts.append("## 4. Bits on the wire and omega per operator (the poster's table)"
                         "\n\nbits/element measured from each operator's real byte encoding; "
                         "omega measured as ||C(x)-x||^2/||x||^2 on 2^20 Gaussians, next to its "
                         "theoretical bound; bits per iteration = bits/element x d.\n\n```\n"
                         + run_script(["bench/compress.py", "--size", "20", "--repeat", "1",
                                       "--ops", ";".join(POSTER_OPS)], 1800) + "\n```\n")
        if "5" in want:
            parts.append(f"## 5. Loss sweep (NAT8, {args.loss_size} elements)\n\nNetwork: "
                         f"{net.where}; loss = the switch's update loss simulator (each update "
                         f"dropped with that probability).\n\n"
                         + section_loss(net, args.loss_size, out.parent))
    finally:
        if net is not None:
            net.close()
    if "6" in want:
        parts.append(f"## 6. Local mode end to end vs a loopback echo bound ({args.size} "
                     f"elements)\n\n```\n"
                     + run_script(["bench/local_allreduce.py", "--size", str(args.size),
                                   "--repeat", "2"], 1800) + "\n```\n")
    if "7" in want:
        parts.append("## 7. The rack sweep: 4M elements beside the link-bound time and the ring"
                     "\n\n" + run_script(["bench/rack_allreduce.py", "--bw", "100,1000",
                                           "--workers", "4,8", "--size", "4194304"], 3600)
                     + "\n")
    if "8" in want:
        parts.append("## 8. Memory of a 16M-element all-reduce\n\n" +
                     run_script(["bench/memory.py", "--size", str(1 << 24)], 1800) + "\n")
    parts = keep_unmeasured(out, parts, want)
    parts.append("\n" + COMPANIONS)
    parts.append(f"\n_Report generated in {time.monotonic() - t_start:.0f} s._\n")
    out.write_text("\n".join(parts))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
