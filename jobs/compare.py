"""Comparisons: the same training job once per compressor on one switch, and its table."""
from __future__ import annotations

import os

from nina.jobmsg import JobAborted, JobDiverged
from switch.handles import ExternalSwitch


def open_switch(args, run_dir: str, log=print):
    """The switch a command uses: the one given by --switch/--grpc, or a fresh local one."""
    from switch.handles import LocalSwitch
    if args.switch or args.grpc:
        if not (args.switch and args.grpc):
            raise ValueError("--switch and --grpc go together (data address and P4Runtime)")
        return ExternalSwitch(args.switch, args.grpc)
    log(f"starting the embedded switch (log {os.path.join(run_dir, 'switch.log')})")
    return LocalSwitch(run_dir, log=log)


def default_target(model: str) -> tuple[float, str, bool]:
    """(target, metric key, higher is better) of the comparison table."""
    if model == "lsq":
        return 0.002, "test_loss", False
    return 0.93, "test_accuracy", True


def compare(specs, base, n_workers, args, target, key, higher, log=print, switch=None,
            spawn=None, spec_factory=None, coord_port=None, coord_ip=None, next_job_id=None,
            coordinator=None):
    """Run the job once per compressor on one switch; returns (rows, run folder).
    coord_ip/coord_port: a fixed coordinator address (for workers started elsewhere);
    next_job_id: a callable giving each job its id (a rack's, so traces tell jobs apart);
    coordinator: the factory of each job's coordinator (a rack's binds it in its own host)."""
    from dataclasses import replace
    from jobs.runner import run_training
    from jobs.runfolder import new_run_dir, write_comparison, write_run
    what = specs[0] if base.algorithm in ("allreduce", "choco") else base.algorithm
    name = getattr(args, "name", None) or \
        (f"compare-{'-'.join(specs)}" if len(specs) > 1 else what) + f"-{base.model}"
    folder = new_run_dir(name, args.out, args.runs_dir)
    own = switch is None and base.algorithm == "allreduce"   # gossip needs no switch
    if own:
        switch = open_switch(args, folder, log)
    rows, runs = [], {}
    try:
        for i, spec in enumerate(specs):
            cfg = replace(base, compressor=spec)
            sub = os.path.join(folder, _safe(spec)) if len(specs) > 1 else folder
            job_name = {"allreduce": spec, "choco": f"choco {spec}"}.get(cfg.algorithm,
                                                                         cfg.algorithm)
            log(f"[{i + 1}/{len(specs)}] {job_name}: {n_workers} workers, {cfg.model} on "
                f"{cfg.data}, {cfg.steps} steps"
                + (f", switch loss {args.loss}" if args.loss else ""))
            kw = {"spawn": spawn} if spawn is not None else {}
            if coordinator is not None:
                kw["coordinator"] = coordinator
            if spec_factory is not None:
                kw["spec_factory"] = spec_factory
            if coord_ip is not None:
                kw["coord_ip"] = coord_ip
            if coord_port is not None:
                kw.update(coord_port=coord_port, more_jobs=i < len(specs) - 1)
            job_id = next_job_id() if next_job_id is not None else i + 1
            try:
                out = run_training(cfg, n_workers, switch, job_id=job_id, loss=args.loss,
                                   run_dir=sub, name=job_name, log=log,
                                   progress=not getattr(args, "no_progress", False), **kw)
            except JobAborted as e:
                status = "diverged" if isinstance(e, JobDiverged) else "failed"
                rows.append(_failed_row(spec, cfg, n_workers, e, status, sub, target, key,
                                        higher))
                if e.outcome is not None and e.outcome.records:
                    write_run(sub, e.outcome.config, e.outcome.records, e.outcome.summary)
                    runs[spec] = e.outcome.records
                # one job alone fails the command; workers started elsewhere (coord_port)
                # left with the failed job, so no later job could start
                if len(specs) == 1 or coord_port is not None:
                    raise
                log(f"    {_why(status, str(e))}; the comparison goes on without it")
                continue
            files = write_run(sub, out.config, out.records, out.summary)
            rows.append(_row(out, sub, target, key, higher))
            runs[spec] = out.records
            if cfg.algorithm == "allreduce":
                log(f"    models identical on all workers (hash {out.summary['model_hash']}); "
                    f"metrics: {files[1]}")
            else:
                log(f"    decentralized: consensus distance "
                    f"{out.summary.get('consensus_distance', float('nan')):.3g} at the end; "
                    f"metrics: {files[1]}")
    except BaseException:   # Ctrl-C, a broken switch: keep what finished (and why), then stop
        if len(specs) > 1 and rows:
            write_comparison(folder, rows, runs)
        raise
    finally:
        if own:
            switch.stop()
    if len(specs) > 1:
        write_comparison(folder, rows, runs)
    return rows, folder


def _row(out, sub: str, target, key, higher, status: str = "ok", error: str = "") -> dict:
    from jobs.metrics import steps_to_target
    st, sb = steps_to_target(out.records, target, key, higher)
    return {**out.summary, "status": status, "error": error, "steps_to_target": st,
            "bytes_to_target": sb, "seconds": round(out.seconds, 1),
            "startup_s": round(out.startup_seconds, 3), "train_s": round(out.train_seconds, 3),
            "folder": sub, "switch_counters": out.counters}


def _failed_row(spec, cfg, n_workers, e, status, sub, target, key, higher) -> dict:
    """The row of a job that did not finish: what it did until then, and why it stopped."""
    from worker.train import plan
    if e.outcome is not None:
        return _row(e.outcome, sub, target, key, higher, status, str(e))
    return {"compressor": spec, "path": plan(spec).label, "workers": n_workers, "steps": 0,
            "status": status, "error": str(e), "folder": sub}


def _safe(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in spec)


def _why(status: str, error: str) -> str:
    return error if error.startswith(status) else f"{status}: {error}"


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(rows: list[dict], target: float, key: str, baseline: str | None = None) -> str:
    """One line per compressor; ratios against `baseline` (default: the first finished row);
    then where each job's bytes went (nina.accounting), and why a job did not finish."""
    done = [r for r in rows if r.get("status", "ok") == "ok" and r.get("bytes_total")]
    base = next((r for r in done if r["compressor"] == baseline), done[0] if done else {})
    cw = max(12, *(len(r["compressor"]) for r in rows)) + 2
    pw = max(12, *(len(r["path"]) for r in rows)) + 2
    metric = "acc" if key == "test_accuracy" else "f-f*"
    head = (f"{'compressor':<{cw}}{'path':<{pw}}{'status':>9}{'final ' + metric:>11}"
            f"{'steps@' + format(target, 'g'):>12}"
            f"{'MB up':>8}{'MB down':>8}{'bit/el up':>10}{'down':>6}{'retx':>6}"
            f"{'start s':>8}{'train s':>8}{'MB@tgt':>8}{'x steps':>8}{'x bytes':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        fin = r.get("final_test_accuracy") if key == "test_accuracy" else r.get("final_test_loss")
        st, sb = r.get("steps_to_target"), r.get("bytes_to_target")
        xs = (f"{st / base['steps_to_target']:.2f}" if st and base.get("steps_to_target")
              else "-")
        if sb and base.get("bytes_to_target"):
            xb = f"{sb / base['bytes_to_target']:.3f}"
        elif r.get("bytes_total") and base.get("bytes_total"):
            xb = f"{r['bytes_total'] / base['bytes_total']:.3f}*"
        else:
            xb = "-"
        mb = lambda k: _f(r[k] / 1e6 if r.get(k) is not None else None, ".2f")  # noqa: E731
        lines.append(
            f"{r['compressor']:<{cw}}{r['path']:<{pw}}{r.get('status', 'ok'):>9}"
            f"{_f(fin, '.4g'):>11}{(st or '-'):>12}{mb('bytes_up'):>8}{mb('bytes_down'):>8}"
            f"{_f(r.get('bits_per_element_up'), '.1f'):>10}"
            f"{_f(r.get('bits_per_element_down'), '.1f'):>6}"
            f"{_f(r.get('retransmissions'), 'd'):>6}"
            f"{_f(r.get('startup_s'), '.1f'):>8}{_f(r.get('train_s'), '.1f'):>8}"
            f"{(format(sb / 1e6, '.2f') if sb else '-'):>8}{xs:>8}{xb:>8}")
    lines.append(f"x steps / x bytes: to reach {metric} {target:g}, relative to "
                 f"{base.get('compressor', '-')} (* = whole run, target not reached). Bytes: "
                 f"UDP payloads (NINA header + payload) of all workers, up (workers to switch) "
                 f"and down, retransmissions included; bit/el: bits per gradient element per "
                 f"worker, everything sent (parts below); start s: processes, data, model and "
                 f"install up to the start barrier; train s: the steps.")
    if any(r.get("algorithm") for r in rows):
        lines.append("Decentralized rows: accuracy of the averaged model; bytes and packets are "
                     "the gossip datagrams (gossip header + payload) the workers sent to "
                     "(up) and received from (down) their neighbours.")
    lines += ["", format_parts(rows)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['compressor']}: {_why(r['status'], r['error'])}")
    return "\n".join(lines)


def format_parts(rows: list[dict]) -> str:
    """Where the bytes went, per job and direction, as % of that direction's bytes."""
    from nina.accounting import PARTS
    cw = max(12, *(len(r["compressor"]) for r in rows)) + 2
    head = f"{'bytes by part, % of each way':<{cw + 6}}" + "".join(f"{p:>9}" for p in PARTS) + \
        f"{'payload bit/el':>16}"
    lines = [head]
    for r in rows:
        for d in ("up", "down"):
            tot = r.get(f"bytes_{d}")
            if not tot:
                continue
            cells = "".join(f"{100 * r.get(f'{d}_{p}', 0) / tot:>8.1f}%" for p in PARTS)
            lines.append(f"{r['compressor'] if d == 'up' else '':<{cw}}{d:<6}{cells}"
                         f"{_f(r.get(f'payload_bits_per_element_{d}'), '.2f'):>16}")
    lines.append("payload: the elements; padding: unused element slots of fixed-size packets; "
                 "headers: NINA headers (host all-gather: framing); parts: extra result packets "
                 "of NAT8 sums; priming: the exponent-agreement round of each call; retx: "
                 "retransmissions and their answers (docs/workbench.md).")
    return "\n".join(lines)
