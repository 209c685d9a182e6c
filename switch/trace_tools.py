"""Reading a switch trace: summary per job and worker, the life of a slot, plots.

All of it streams the trace in chunks, so a trace larger than memory works; only per-round
state (open rounds, completion latencies) is kept.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nina.decisions import DROP_DECISIONS, Decision
from switch.trace_file import iter_chunks, record_count, resolve

RETRANSMIT_DECISIONS = (Decision.RETRANSMIT_REPLY, Decision.DROP_DUPLICATE)


@dataclass
class Summary:
    records: int = 0
    t_first: int | None = None
    t_last: int | None = None
    # (job, worker) -> Decision -> packets
    per_worker: dict = field(default_factory=lambda: defaultdict(lambda: np.zeros(len(Decision),
                                                                                   np.int64)))
    latencies_ns: list = field(default_factory=list)   # FIRST -> COMPLETE per round
    slots_used: dict = field(default_factory=lambda: defaultdict(set))  # job -> {slot}
    open_rounds_max: int = 0
    open_round_ns: int = 0      # integral of open rounds over time (for mean occupancy)
    forwarded: int = 0          # non-NINA frames (plain L2 forwarding), not any job's


def _progress(total: int, enabled: bool) -> Callable[[int], None]:
    if not enabled or total < (1 << 21):
        return lambda n: None
    from tqdm import tqdm
    bar = tqdm(total=total, unit="rec", unit_scale=True, desc="trace", leave=False)
    return bar.update


def iter_records(path: Path, progress: bool = True) -> Iterator[np.ndarray]:
    path = resolve(path)
    update = _progress(record_count(path), progress)
    for chunk in iter_chunks(path):
        update(len(chunk))
        yield chunk


class RoundTracker:
    """Pairs FIRST with COMPLETE per (job, slot, ver) to get latency and occupancy."""

    def __init__(self, summary: Summary):
        self.s = summary
        self.open: dict[tuple[int, int, int], int] = {}
        self.t_prev: int | None = None

    def feed(self, chunk: np.ndarray) -> None:
        sel = (chunk["decision"] == Decision.FIRST) | (chunk["decision"] == Decision.COMPLETE)
        for t, job, slot, ver, dec, cnt in zip(*(chunk[k][sel].tolist() for k in
                                               ("time_ns", "job", "slot", "ver", "decision",
                                                "count"))):
            if self.t_prev is not None:
                self.s.open_round_ns += len(self.open) * max(0, t - self.t_prev)
            self.t_prev = t
            key = (job, slot, ver)
            if dec == Decision.FIRST:
                self.open[key] = t
            elif cnt == 1 and key not in self.open:  # a job of one worker completes at once
                self.s.latencies_ns.append(0)
            elif key in self.open:
                self.s.latencies_ns.append(t - self.open.pop(key))
            self.s.open_rounds_max = max(self.s.open_rounds_max, len(self.open))


def summarize(path: Path, progress: bool = True) -> Summary:
    s = Summary()
    rounds = RoundTracker(s)
    for chunk in iter_records(path, progress):
        if not len(chunk):
            continue
        s.records += len(chunk)
        s.t_first = int(chunk["time_ns"][0]) if s.t_first is None else s.t_first
        s.t_last = int(chunk["time_ns"][-1])
        fwd = chunk["decision"] == Decision.FORWARDED
        s.forwarded += int(fwd.sum())
        nina_recs = chunk[~fwd]
        keys = nina_recs["job"].astype(np.int64) << 16 | nina_recs["worker"].astype(np.int64) << 8 \
            | nina_recs["decision"]
        uniq, counts = np.unique(keys, return_counts=True)
        for k, c in zip(uniq.tolist(), counts.tolist()):
            s.per_worker[(k >> 16, (k >> 8) & 0xFF)][k & 0xFF] += c
        nina = chunk["decision"] != Decision.FORWARDED
        for job in np.unique(chunk["job"][nina]).tolist():
            s.slots_used[job].update(np.unique(chunk["slot"][nina & (chunk["job"] == job)])
                                     .tolist())
        rounds.feed(chunk)
    return s


def format_summary(s: Summary) -> str:
    if not s.records:
        return "empty trace: the switch processed no packets while tracing"
    span = (s.t_last - s.t_first) / 1e9
    lines = [f"{s.records} records over {span:.3f} s"]
    header = f"{'job':>5} {'worker':>6} {'packets':>8} {'first':>6} {'aggr':>6} {'complete':>8} " \
             f"{'retx':>6} {'drops':>6}  drops by reason"
    lines.append(header)
    for (job, worker), c in sorted(s.per_worker.items()):
        drops = {Decision(d).name[5:].lower(): int(c[d]) for d in DROP_DECISIONS if c[d]}
        drop_text = ", ".join(f"{k}={v}" for k, v in drops.items()) or "-"
        lines.append(
            f"{job:>5} {worker:>6} {int(c.sum()):>8} {int(c[Decision.FIRST]):>6} "
            f"{int(c[Decision.AGGREGATE]):>6} {int(c[Decision.COMPLETE]):>8} "
            f"{int(sum(c[d] for d in RETRANSMIT_DECISIONS)):>6} "
            f"{int(sum(c[d] for d in DROP_DECISIONS)):>6}  {drop_text}")
    if s.forwarded:
        lines.append(f"forwarded (not NINA, plain L2): {s.forwarded} frames")
    for job, slots in sorted(s.slots_used.items()):
        lines.append(f"job {job}: {len(slots)} slots used")
    if s.latencies_ns:
        lat = np.array(s.latencies_ns) / 1e3
        lines.append(f"rounds completed: {lat.size}; completion latency us: "
                     f"p50 {np.percentile(lat, 50):.1f}, p99 {np.percentile(lat, 99):.1f}, "
                     f"max {lat.max():.1f}")
    if span > 0:
        lines.append(f"slot occupancy: mean {s.open_round_ns / (span * 1e9):.2f} open rounds, "
                     f"max {s.open_rounds_max}")
    return "\n".join(lines)


def slot_life(path: Path, slot: int, job: int | None = None, worker: int | None = None,
              limit: int = 200, progress: bool = True) -> list[str]:
    """The life of a slot, packet by packet, as printable lines."""
    out: list[str] = []
    t0 = None
    for chunk in iter_records(path, progress):
        sel = (chunk["slot"] == slot) & (chunk["decision"] != Decision.FORWARDED)
        if job is not None:
            sel &= chunk["job"] == job
        if worker is not None:
            sel &= chunk["worker"] == worker
        for r in chunk[sel]:
            t0 = int(r["time_ns"]) if t0 is None else t0
            d = Decision(int(r["decision"]))
            sent = {Decision.COMPLETE: "result multicast to the job's workers",
                    Decision.RETRANSMIT_REPLY: f"result unicast to worker {int(r['worker'])}"}
            out.append(f"{(int(r['time_ns']) - t0) / 1e3:>12.1f} us  port {int(r['ingress_port']):>3}"
                       f"  job {int(r['job']):>3}  ver {int(r['ver'])}  worker {int(r['worker']):>2}"
                       f"  {d.name.lower():<17} bitmap {int(r['bitmap']):032b} count "
                       f"{int(r['count']):>2} exp {int(r['exponent']):>3} off {int(r['offset'])}"
                       + (f"  -> {sent[d]}" if d in sent else ""))
            if len(out) >= limit:
                return out
    return out


def plot(path: Path, out_dir: Path, progress: bool = True, max_points: int = 200_000) -> list[Path]:
    """Slot timeline (time x slot, coloured by decision) and completion-latency histogram."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = resolve(path)
    total = record_count(path)
    stride = max(1, total // max_points)  # thin very long traces for the scatter plot
    pts = [c[::stride] for c in iter_records(path, progress)]
    recs = np.concatenate(pts) if pts else np.zeros(0)
    s = summarize(path, progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    fig, ax = plt.subplots(figsize=(10, 5))
    if len(recs):
        t = (recs["time_ns"] - recs["time_ns"][0]) / 1e6
        for d in np.unique(recs["decision"]):
            m = recs["decision"] == d
            ax.scatter(t[m], recs["slot"][m], s=3, label=Decision(int(d)).name.lower())
        ax.legend(markerscale=4, fontsize=7)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("slot")
    ax.set_title(f"slot timeline ({total} records" + (f", 1 in {stride} shown)" if stride > 1
                                                        else ")"))
    files.append(out_dir / "trace_timeline.png")
    fig.savefig(files[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    if s.latencies_ns:
        ax.hist(np.array(s.latencies_ns) / 1e3, bins=60)
    ax.set_xlabel("completion latency, first to last contribution (us)")
    ax.set_ylabel("rounds")
    files.append(out_dir / "trace_latency.png")
    fig.savefig(files[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return files
