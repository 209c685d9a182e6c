"""Where p4c's outputs for p4/nina.p4 are: the BMv2 JSON and the P4Info every controller,
harness and rack loads. One place, with the overrides a user with another build sets:
NINA_P4INFO and NINA_BMV2_JSON (e.g. a p4c output directory)."""
from __future__ import annotations

import os

from nina.procs import REPO

P4_BUILD_DIR = os.path.join(REPO, "p4", "build")
P4INFO_PATH = os.environ.get("NINA_P4INFO") or os.path.join(P4_BUILD_DIR, "nina.p4info.txtpb")
BMV2_JSON_PATH = os.environ.get("NINA_BMV2_JSON") or os.path.join(P4_BUILD_DIR, "nina.json")
