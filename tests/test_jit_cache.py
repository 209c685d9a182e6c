"""The compiled code's disk cache (nina.jit): one directory per version of the compiled sources,
since numba checks only the stamp of the file defining a cached function and would load a
caller's old machine code after its callee in another file changed; old versions' directories
are pruned, the current one and anything not ours are kept."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nina import jit

REPO = Path(__file__).resolve().parent.parent


def test_the_default_cache_is_a_directory_of_this_version_of_the_sources(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", "import os, nina.jit; "
                          "print(os.environ['NUMBA_CACHE_DIR'])"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert Path(out.strip()) == tmp_path / "nina" / "numba" / jit.sources_key()
    # an explicit NUMBA_CACHE_DIR is taken as it is
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", "import os, nina.jit; "
                          "print(os.environ['NUMBA_CACHE_DIR'])"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == str(tmp_path / "mine")


def test_a_change_to_any_compiled_source_file_is_a_new_key(tmp_path):
    for pkg in ("nina", "switch", "worker"):
        for f in (REPO / pkg).rglob("*.py"):
            dst = tmp_path / f.relative_to(REPO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
    key = jit.sources_key(tmp_path)
    assert key == jit.sources_key()
    enc = tmp_path / "worker" / "switch_encoding.py"   # a callee of the window step
    enc.write_text(enc.read_text() + "\n# changed\n")
    assert jit.sources_key(tmp_path) != key


def test_other_versions_unused_for_a_week_are_pruned(tmp_path):
    base = tmp_path / "numba"
    old, recent, current = base / ("a" * 16), base / ("b" * 16), base / ("c" * 16)
    foreign = base / "not-a-version"
    for d in (old, recent, foreign):
        d.mkdir(parents=True)
        (d / "f.nbi").write_text("x")
    week_ago = time.time() - (jit.CACHE_KEEP_DAYS + 1) * 86400
    for d in (old, foreign):
        os.utime(d, (week_ago, week_ago))
    jit._prune_other_versions(current)
    assert not old.exists()
    assert recent.exists() and foreign.exists() and current.is_dir()
