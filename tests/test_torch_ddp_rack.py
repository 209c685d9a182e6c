"""PyTorch DDP on the Mininet rack: ranks in the worker hosts, Gloo over their links, buckets
through the switch. In a module of its own: the rack's controller must be the only one in the
process, and test_torch_ddp.py keeps an embedded switch (with its controller) for the module.
Skips when torch is not installed or the rack cannot run here (root, Mininet)."""
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")

from switch.handles import local_switch_unavailable  # noqa: E402


# ---- the Mininet rack (root) --------------------------------------------------------------------

def _mininet_skip_reason():
    from topology import modes
    d = modes.decide("mininet", modes.probe())
    return d.error or local_switch_unavailable()


@pytest.mark.root
def test_mininet_rack_runs_ddp_through_the_switch_and_gloo_over_its_links(tmp_path):
    why = _mininet_skip_reason()
    if why:
        print(f"SKIP reason: Mininet rack unavailable: {why}")
        pytest.skip(f"Mininet rack unavailable: {why}")
    from topology.impair import LinkShape
    from topology.mininet_rack import MininetRack
    from topology.rack_jobs import run_train
    rack = MininetRack(2, LinkShape(bw_mbit=50), run_dir=str(tmp_path), trace=False, log=print)
    with rack:
        rows, table = run_train(rack, "--framework torch --compare gloo,nat8+cm --steps 30 "
                                      "--eval-every 30")
        counters = rack.controller.read_counters()
    print(table)
    gloo, cm = rows
    assert gloo["path"] == "gloo" and cm["path"] == "switch"
    assert cm["bytes_up"] > 0 and cm["final_test_accuracy"] > 0.3
    assert counters["COMPLETE"][0] > 0    # the switch aggregated the buckets
