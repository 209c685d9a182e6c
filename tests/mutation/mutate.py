"""Mutation testing of NINA's core modules with cosmic-ray (`make mutate`; slow, not in CI).

Each target is one module (or package) and the tests that guard it. The run works on a copy of
the checkout's tracked files, so a mutant is never left behind in the work tree, however the
run ends. For each target cosmic-ray makes every mutant of the module (an operator, a
comparison, a constant, a boolean changed...), runs the target's tests against it, and the
mutant is killed when they fail. A survivor is either an equivalent mutant (no behaviour
changed) or a missing test: docs/testing.md says how to triage them.

    python tests/mutation/mutate.py                  # every target
    python tests/mutation/mutate.py wire encodings   # some
    python tests/mutation/mutate.py --list

cosmic-ray itself lives in a venv of its own (.venv-mutate, built by `make mutate` from the
`mutate` extra of pyproject.toml): it parses Python with parso >= 0.8, and the project's venv
has parso 0.7 (p4runtime-shell pins jedi 0.17.2), which cannot read Python 3.11. The tests a
mutant is judged by run with this script's Python, the project's.

Writes <out>/<target>.sqlite (cosmic-ray's session: `cr-report`, `cr-html` read it) and
<out>/<target>-survivors.txt (each surviving mutant as a diff), and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# target -> (module path, the tests that guard it). The tests are the fast ones that exercise
# the module directly; the long end-to-end ones (processes, racks) are left to `make test`.
TARGETS: dict[str, tuple[str, list[str]]] = {
    "wire": ("nina/wire.py", ["tests/test_wire.py", "tests/test_switch_encoding.py"]),
    "encodings": ("worker/switch_encoding.py", ["tests/test_switch_encoding.py"]),
    "pipeline": ("switch/pipeline.py", ["tests/test_pipeline.py", "tests/conformance",
                                        "tests/test_p4_element_logic.py"]),
    "client": ("worker/allreduce.py", ["tests/test_allreduce.py"]),
    "compressors": ("worker/compress", ["tests/test_compress.py", "tests/test_compress_stats.py"]),
    "controller": ("switch/controller.py", ["tests/test_p4runtime.py"]),
    "p4gen": ("p4/gen_p4.py", ["tests/test_p4_program.py", "tests/test_p4_element_logic.py"]),
    "trainer": ("worker/train.py", ["tests/test_train.py"]),
}

# Operators left out: swaps between unrelated arithmetic operators (x + y -> x ** y, x % y ...)
# multiply the mutant count several times and are nearly always killed by the first test;
# the natural swaps (+/-, *//, <</>>, &/|, comparisons, constants, booleans, break/continue,
# removed decorators, exceptions) are kept.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(Pow|Mod|FloorDiv|BitXor)$",
    r"core/ReplaceBinaryOperator_(Pow|Mod|BitXor)_.*",
    r"core/ReplaceBinaryOperator_(Add|Sub)_(Div|RShift|LShift|BitOr|BitAnd)$",
    r"core/ReplaceBinaryOperator_(Mul|Div)_(RShift|LShift|BitOr|BitAnd)$",
    r"core/ReplaceBinaryOperator_(RShift|LShift|BitOr|BitAnd)_(Mul|Div)$",
]


def fail(msg: str) -> int:
    print(f"mutate: {msg}", file=sys.stderr)
    return 2


def copy_checkout(dest: Path) -> None:
    """The tracked files (with the work tree's uncommitted edits) into dest."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def config_text(module: str, tests: list[str], timeout: float) -> str:
    cmd = (f"{sys.executable} -m pytest -x -q -p no:cacheprovider -o addopts= "
           + " ".join(tests))
    return "\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(module)}",
        f"timeout = {timeout}",
        "excluded-modules = []",
        f"test-command = {json.dumps(cmd)}",
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
        "[cosmic-ray.filters.operators-filter]",
        f"exclude-operators = {json.dumps(EXCLUDED_OPERATORS)}",
        "",
    ])


def run_target(name: str, work: Path, out: Path, timeout: float, log, bindir: Path,
               resume: bool = False) -> dict:
    module, tests = TARGETS[name]
    cfg = out / f"{name}.toml"
    session = out / f"{name}.sqlite"
    cfg.write_text(config_text(module, tests, timeout))
    fresh = not (resume and session.exists())
    if fresh and session.exists():
        session.unlink()
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}

    def cr(*args, check=True):
        return subprocess.run([str(bindir / args[0]), *args[1:]], cwd=work, env=env,
                              capture_output=True, text=True, check=check)
    t0 = time.monotonic()
    if fresh:
        cr("cosmic-ray", "init", str(cfg), str(session))
        cr("cr-filter-operators", str(session), str(cfg))
        cr("cr-filter-pragma", str(session))
    base = cr("cosmic-ray", "baseline", str(cfg), check=False)
    if base.returncode != 0:
        raise RuntimeError(f"{name}: the tests fail without any mutant ({' '.join(tests)}); "
                           f"fix them first:\n{(base.stdout + base.stderr)[-1500:]}")
    log(f"{name}: {module} against {' '.join(tests)}")
    cr("cosmic-ray", "exec", str(cfg), str(session))
    dump = cr("cosmic-ray", "dump", str(session)).stdout
    counts = {"mutants": 0, "killed": 0, "survived": 0, "incompetent": 0, "filtered": 0}
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None:
            continue
        if result.get("worker_outcome") == "skipped":   # an EXCLUDED_OPERATORS mutant
            counts["filtered"] += 1
            continue
        counts["mutants"] += 1
        outcome = result.get("test_outcome")
        if outcome == "killed":
            counts["killed"] += 1
        elif outcome == "survived":
            counts["survived"] += 1
            m = item["mutations"][0]
            survivors.append(f"# {m['module_path']}:{m['start_pos'][0]} {m['operator_name']} "
                             f"#{m['occurrence']}\n{result.get('diff', '')}\n")
        else:
            counts["incompetent"] += 1
    (out / f"{name}-survivors.txt").write_text("".join(survivors))
    counts["seconds"] = time.monotonic() - t0
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mutation testing of the core modules "
                                             "(cosmic-ray), each against its own tests.")
    ap.add_argument("targets", nargs="*", metavar="TARGET",
                    help=f"targets to run (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--out", default=str(REPO / "runs" / "mutate"),
                    help="folder for sessions and survivor lists (default runs/mutate)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds one mutant's test run may take before it counts as killed "
                         "(default 120)")
    ap.add_argument("--tool-venv", default=str(REPO / ".venv-mutate"),
                    help="the venv holding cosmic-ray (default .venv-mutate; make mutate "
                         "builds it); the tests run with this script's Python")
    ap.add_argument("--resume", action="store_true",
                    help="continue the targets' sessions in --out where an earlier run stopped "
                         "(mutants not yet run), instead of starting them afresh")
    ap.add_argument("--list", action="store_true", help="list the targets and their tests")
    a = ap.parse_args(argv)
    if a.list:
        for name, (module, tests) in TARGETS.items():
            print(f"{name:12} {module:28} {' '.join(tests)}")
        return 0
    unknown = [t for t in a.targets if t not in TARGETS]
    if unknown:
        return fail(f"unknown target {unknown[0]!r}; targets: {', '.join(TARGETS)}")
    if not a.timeout > 0:
        return fail(f"--timeout must be > 0, got {a.timeout}")
    bindir = Path(a.tool_venv) / "bin"
    if not (bindir / "cosmic-ray").exists():
        return fail(f"no cosmic-ray in {a.tool_venv}: `make mutate` builds that venv from "
                    f"pyproject.toml's `mutate` extra")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a timeout, a stopped make) ends like Ctrl-C: the running cosmic-ray is killed
    # and the copy removed; a later --resume goes on from the sessions
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    with tempfile.TemporaryDirectory(prefix="nina-mutate-") as tmp:
        work = Path(tmp)
        copy_checkout(work)
        for name in a.targets or list(TARGETS):
            try:
                c = run_target(name, work, out, a.timeout, print, bindir, a.resume)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                text = getattr(e, "stderr", "") or str(e)
                return fail(text.strip().splitlines()[-1] if text.strip() else str(e))
            rows.append((name, c))
            print(f"  {c['mutants']} mutants run: {c['killed']} killed, {c['survived']} "
                  f"survived, {c['incompetent']} incompetent (broke the run itself); "
                  f"{c['filtered']} of excluded operators not run ({c['seconds']:.0f} s)")
    print(f"\n{'target':12}{'mutants':>9}{'killed':>8}{'survived':>10}{'score':>8}")
    for name, c in rows:
        score = c["killed"] / max(1, c["killed"] + c["survived"])
        print(f"{name:12}{c['mutants']:>9}{c['killed']:>8}{c['survived']:>10}{score:>8.1%}")
    print(f"survivors (as diffs): {out}/<target>-survivors.txt; triage them as docs/testing.md "
          f"says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
