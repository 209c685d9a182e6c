"""The shared argparse value types, through the real `nina` parser: bad values are one-line
usage errors naming the value; good ones parse to numbers."""
from __future__ import annotations

import pytest

from nina.cli import build_parser


@pytest.mark.parametrize("argv,message", [
    (["train", "--workers", "40"], "40: a job has 1..32 workers"),
    (["train", "--workers", "0"], "0: a job has 1..32 workers"),
    (["demo", "--steps", "0"], "0 must be >= 1"),
    (["train", "--loss", "x"], "'x' is not a number"),
    (["train", "--loss", "1.0"], "1.0 is not a probability in [0, 1)"),
    (["rack", "--loss", "120"], "120 is not a percentage in [0, 100)"),
    (["rack", "--loss", "nan"], "'nan' is not a finite number"),
    (["rack", "--workers", "33"], "33: a job has 1..32 workers"),
    (["switch", "--pool-slots", "two"], "'two' is not an integer"),
])
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_good_values_parse():
    a = build_parser().parse_args(["train", "--workers", "32", "--loss", "0.05"])
    assert (a.workers, a.loss) == (32, 0.05)
    a = build_parser().parse_args(["rack", "--loss", "2.5", "--workers", "3"])
    assert (a.loss, a.workers) == (2.5, 3)
