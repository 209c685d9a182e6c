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
from switch.trace_jobs import label

RETRANSMIT_DECISIONS = (Decision.RETRANSMIT_REPLY, Decision.DROP_DUPLICATE)
# packets of a round (accepted or answered): with 0 elements they are priming updates, the
# exponent agreement of a call's first window
ROUND_DECISIONS = (Decision.FIRST, Decision.AGGREGATE, Decision.COMPLETE,
                   Decision.RETRANSMIT_REPLY, Decision.DROP_DUPLICATE)


@dataclass
class Summary:
    records: int = 0
    t_first: int | None = None
    t_last: int | None = None
    # (job, worker) -> Decision -> packets
    per_worker: dict = field(default_factory=lambda: defaultdict(lambda: np.zeros(len(Decision),
                                                                                   np.int64)))
    latencies_ns: list = field(default_factory=list)   # FIRST -> COMPLETE per round
    latencies_by_job: dict = field(default_factory=lambda: defaultdict(list))
    slots_used: dict = field(default_factory=lambda: defaultdict(set))  # job -> {slot}
    open_rounds_max: int = 0
    open_round_ns: int = 0      # integral of open rounds over time (for mean occupancy)
    forwarded: int = 0          # non-NINA frames (plain L2 forwarding), not any job's
    forwarded_ports: dict = field(default_factory=lambda: defaultdict(int))  # ingress -> frames
    priming: dict = field(default_factory=lambda: defaultdict(int))   # (job, worker) -> packets
    elements: dict = field(default_factory=lambda: defaultdict(int))  # (job, worker) -> elements


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
                self.s.latencies_by_job[job].append(0)
            elif key in self.open:
                lat = t - self.open.pop(key)
                self.s.latencies_ns.append(lat)
                self.s.latencies_by_job[job].append(lat)
            self.s.open_rounds_max = max(self.s.open_rounds_max, len(self.open))


def _keep(chunk: np.ndarray, jobs) -> np.ndarray:
    """Records of the given jobs (and no plain L2 frames), or the chunk if jobs is None."""
    if jobs is None:
        return chunk
    return chunk[np.isin(chunk["job"], list(jobs)) & (chunk["decision"] != Decision.FORWARDED)]


def summarize(path: Path, progress: bool = True, jobs=None) -> Summary:
    """Counts of the whole trace, or of the jobs in `jobs` only."""
    s = Summary()
    rounds = RoundTracker(s)
    for chunk in iter_records(path, progress):
        chunk = _keep(chunk, jobs)
        if not len(chunk):
            continue
        s.records += len(chunk)
        s.t_first = int(chunk["time_ns"][0]) if s.t_first is None else s.t_first
        s.t_last = int(chunk["time_ns"][-1])
        fwd = chunk["decision"] == Decision.FORWARDED
        s.forwarded += int(fwd.sum())
        for port, c in zip(*np.unique(chunk["ingress_port"][fwd], return_counts=True)):
            s.forwarded_ports[int(port)] += int(c)
        nina_recs = chunk[~fwd]
        rnd = nina_recs[np.isin(nina_recs["decision"], ROUND_DECISIONS)]
        keys_jw = rnd["job"].astype(np.int64) << 8 | rnd["worker"].astype(np.int64)
        for k in np.unique(keys_jw[rnd["elements"] == 0]).tolist():
            s.priming[(k >> 8, k & 0xFF)] += int(((keys_jw == k) & (rnd["elements"] == 0)).sum())
        acc = nina_recs[np.isin(nina_recs["decision"], (Decision.FIRST, Decision.AGGREGATE,
                                                        Decision.COMPLETE))]
        keys_a = acc["job"].astype(np.int64) << 8 | acc["worker"].astype(np.int64)
        uk, inv = np.unique(keys_a, return_inverse=True)
        sums = np.bincount(inv, weights=acc["elements"], minlength=len(uk))
        for k, v in zip(uk.tolist(), sums.tolist()):
            s.elements[(k >> 8, k & 0xFF)] += int(v)
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


def format_summary(s: Summary, names: dict[int, str] | None = None) -> str:
    names = names or {}
    if not s.records:
        return "empty trace: the switch processed no packets while tracing"
    span = (s.t_last - s.t_first) / 1e9
    lines = [f"{s.records} records over {span:.3f} s"]
    for job in sorted({j for j, _ in s.per_worker}):
        lines.append(f"{label(job, names)}: {len(s.slots_used.get(job, ()))} slots used")
    header = f"{'job':>5} {'worker':>6} {'packets':>8} {'priming':>8} {'elements':>9} " \
             f"{'first':>6} {'aggr':>6} {'complete':>8} {'retx':>6} {'drops':>6}  drops by reason"
    lines.append(header)
    for (job, worker), c in sorted(s.per_worker.items()):
        drops = {Decision(d).name[5:].lower(): int(c[d]) for d in DROP_DECISIONS if c[d]}
        drop_text = ", ".join(f"{k}={v}" for k, v in drops.items()) or "-"
        lines.append(
            f"{job:>5} {worker:>6} {int(c.sum()):>8} {s.priming.get((job, worker), 0):>8} "
            f"{s.elements.get((job, worker), 0):>9} {int(c[Decision.FIRST]):>6} "
            f"{int(c[Decision.AGGREGATE]):>6} {int(c[Decision.COMPLETE]):>8} "
            f"{int(sum(c[d] for d in RETRANSMIT_DECISIONS)):>6} "
            f"{int(sum(c[d] for d in DROP_DECISIONS)):>6}  {drop_text}")
    lines.append("priming: updates with no elements (a call's exponent agreement, first "
                 "window); elements: elements of accepted updates; retx: retransmissions "
                 "answered or dropped as duplicates")
    if s.forwarded:
        ports = ", ".join(f"port {p}: {n}" for p, n in sorted(s.forwarded_ports.items()))
        lines.append(f"not aggregated, forwarded as plain L2: {s.forwarded} frames ({ports}) — "
                     f"host all-gather of compressors the switch cannot sum, worker <-> "
                     f"coordinator messages, ARP")
    if s.latencies_ns:
        lat = np.array(s.latencies_ns) / 1e3
        lines.append(f"rounds completed: {lat.size}; completion latency us: "
                     f"p50 {np.percentile(lat, 50):.1f}, p99 {np.percentile(lat, 99):.1f}, "
                     f"max {lat.max():.1f}")
    if span > 0:
        lines.append(f"slot occupancy: mean {s.open_round_ns / (span * 1e9):.2f} open rounds, "
                     f"max {s.open_rounds_max}")
    return "\n".join(lines)


SHOW_LEGEND = ("bitmap/count/exp: the slot version's worker bitmap, contributions and max "
               "exponent byte after the packet; elem: the packet's element count (0: a priming "
               "update, which only carries the worker's exponent for the agreement). A data "
               "update carries the exponent of the chunk one window ahead, so exp 0 on one "
               "means no chunk follows in this call.")


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
                       f" elem {int(r['elements']):>3}"
                       + ("  priming" if int(r["elements"]) == 0 and d in ROUND_DECISIONS
                          else "")
                       + (f"  -> {sent[d]}" if d in sent else ""))
            if len(out) >= limit:
                return out
    return out


def plot(path: Path, out_dir: Path, progress: bool = True, max_points: int = 200_000,
         jobs=None, names: dict[int, str] | None = None) -> list[Path]:
    """Per job (one panel each, named): slot timeline coloured by decision, each decision in
    its own strip of the slot's row so none hides another; completion-latency histograms.
    Plain L2 frames belong to no job and are left out (counted in the title)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names or {}
    path = resolve(path)
    total = record_count(path)
    stride = max(1, total // max_points)  # thin very long traces for the scatter plot
    pts, t_first = [], None
    for c in iter_records(path, progress):
        if len(c) and t_first is None:
            t_first = int(c["time_ns"][0])
        pts.append(_keep(c, jobs)[::stride])
    recs = np.concatenate(pts) if pts else np.zeros(0, "u1")
    fwd = recs["decision"] == Decision.FORWARDED if len(recs) else np.zeros(0, bool)
    recs = recs[~fwd] if len(recs) else recs
    s = summarize(path, progress=False, jobs=jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    job_ids = sorted(set(recs["job"].tolist())) if len(recs) else []
    decisions = sorted(set(recs["decision"].tolist())) if len(recs) else []
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(decisions)}
    strip = {d: (i - (len(decisions) - 1) / 2) * 0.8 / max(1, len(decisions))
             for i, d in enumerate(decisions)}
    files = []
    fig, axes = plt.subplots(max(1, len(job_ids)), 1, figsize=(10, 2.2 + 2.6 * len(job_ids)),
                             squeeze=False)
    for ax, job in zip(axes[:, 0], job_ids):
        r = recs[recs["job"] == job]
        t0 = int(r["time_ns"].min())
        t = (r["time_ns"].astype(np.int64) - t0) / 1e6
        for d in decisions:
            m = r["decision"] == d
            if m.any():
                name = Decision(int(d)).name.lower()
                prim = m & (r["elements"] == 0) & np.isin(r["decision"], ROUND_DECISIONS)
                ax.scatter(t[m & ~prim], r["slot"][m & ~prim] + strip[d], s=3, color=colours[d],
                           label=name)
                if prim.any():
                    ax.scatter(t[prim], r["slot"][prim] + strip[d], s=6, marker="x",
                               color=colours[d], label=f"{name} (priming)")
        ax.set_ylabel("slot")
        ax.set_xlabel(f"ms since the job's first record ({(t0 - t_first) / 1e9:.2f} s into "
                      f"the trace)", fontsize=8)
        ax.set_title(label(job, names), fontsize=9)
        ax.legend(markerscale=3, fontsize=7, loc="upper right", ncol=2)
    fig.suptitle(f"slot timeline per job ({total} records" +
                 (f", 1 in {stride} shown" if stride > 1 else "") +
                 (f"; {s.forwarded} plain L2 frames not shown" if s.forwarded else "") + ")",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    files.append(out_dir / "trace_timeline.png")
    fig.savefig(files[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    lat = s.latencies_by_job
    fig, axes = plt.subplots(max(1, len(lat)), 1, figsize=(7, 1.5 + 2.5 * max(1, len(lat))),
                             squeeze=False)
    for ax, (job, ls) in zip(axes[:, 0], sorted(lat.items())):
        ax.hist(np.array(ls) / 1e3, bins=60)
        ax.set_title(label(job, names), fontsize=9)
        ax.set_ylabel("rounds")
    axes[-1, 0].set_xlabel("completion latency, first to last contribution (us)")
    files.append(out_dir / "trace_latency.png")
    fig.savefig(files[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return files
