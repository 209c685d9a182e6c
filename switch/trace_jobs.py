"""Which job is which in a trace: names from the run folder the trace sits in.

The switch only knows job ids. The run folder knows more: each training job's config.json
(job_id, compressor, path), `allreduce-<id>` folders, and a rack's rack.json (every job's
encoding and slot range). `job_names` puts them together so the trace tools can say
"job 2 (nat+cm: switch NAT8 + C_M)" instead of "job 2"; `folder_jobs` gives the job ids a
job folder holds, so `nina trace summary runs/<rack>/train-1` shows that job only.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

MAX_DEPTH = 3


def _configs(root: Path):
    root_depth = len(root.parts)
    for d, dirs, files in os.walk(root):
        if len(Path(d).parts) - root_depth >= MAX_DEPTH:
            dirs[:] = []
        if "config.json" in files:
            try:
                cfg = json.loads((Path(d) / "config.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(cfg, dict) and "job_id" in cfg:
                yield Path(d), cfg


def job_names(trace_path: Path) -> dict[int, str]:
    """job id -> a readable name, from the folder holding the trace (empty if nothing known)."""
    root = trace_path.parent
    names: dict[int, str] = {}
    try:
        rec = json.loads((root / "rack.json").read_text())
        for jid, j in rec.get("jobs", {}).items():
            names[int(jid)] = f"{j.get('encoding', '?')}" + (" + C_M" if j.get("cm") else "")
    except (OSError, ValueError, AttributeError):
        pass
    for d in (root.iterdir() if root.is_dir() else []):
        m = re.fullmatch(r"allreduce-(\d+)", d.name)
        if m and d.is_dir():
            names[int(m.group(1))] = f"allreduce, {names.get(int(m.group(1)), '?')}"
    for _, cfg in _configs(root):
        names[int(cfg["job_id"])] = f"{cfg.get('compressor', '?')}: {cfg.get('path', '?')}"
    return names


def folder_jobs(folder: Path) -> set[int] | None:
    """The job ids of a job folder (its config.json files), None if it holds none."""
    ids = {int(cfg["job_id"]) for _, cfg in _configs(folder)}
    m = re.fullmatch(r"allreduce-(\d+)", folder.name)
    if m:
        ids.add(int(m.group(1)))
    return ids or None


def label(job: int, names: dict[int, str]) -> str:
    return f"job {job} ({names[job]})" if job in names else f"job {job}"
