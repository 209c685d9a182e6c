"""Fixtures shared by the end-to-end test modules."""
import pytest

from switch.handles import switch_for_checks


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    """A real embedded switch process for the module (module scope: p4runtime-shell allows one
    controller per process, so each module's switch is torn down before the next starts)."""
    sw = switch_for_checks(str(tmp_path_factory.mktemp("switch")), log=print)
    if sw is None:
        print("SKIP reason: no embedded switch (switch/pipeline.py missing)")
        pytest.skip("no embedded switch (switch/pipeline.py missing)")
    yield sw
    sw.stop()
