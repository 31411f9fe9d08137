"""Fuzzing as a habit: a few hundred mutants of small valid artifacts of every format, each
read in a forked child with CPU and address-space limits (fuzz/harness.py), fixed seed.

Every mutant must load or raise WeightsError, within 2 s of CPU and 64 MiB + 2 x (file +
model) of memory; for ``.h5`` the CPU and memory limits stand for the sandbox's, which
turn them into a WeightsError (mobilevec/formats/_h5_child.py). The long run with
>= 10,000 mutants per format is ``fuzz/run.py``; its counts are in docs/security.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fuzz"))
import harness  # noqa: E402
import seeds  # noqa: E402

CASES = 100  # per format: about 25 s for all six on one core
SEED = 20260118

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the harness forks and reads /proc")


@pytest.fixture(scope="module", autouse=True)
def _no_hdf5_plugins():
    harness.env_ready()


def test_every_seed_is_valid_and_read_by_its_reader():
    """The mutants start from artifacts the readers accept (else the fuzz tests nothing)."""
    for fmt in seeds.FORMATS:
        read = harness.reader(fmt)
        for seed in seeds.build(fmt):
            with tempfile.TemporaryDirectory() as tmp:
                harness.write_case(Path(tmp) / "case", seed.files)
                result = read(Path(tmp) / "case" / seed.entry)
                assert result, f"{fmt} seed {seed.name} read as empty"


@pytest.mark.parametrize("fmt", seeds.FORMATS)
def test_mutants_load_or_raise_weights_error_in_bounded_time_and_memory(fmt, tmp_path):
    report = harness.run(fmt, CASES, SEED, keep=tmp_path)
    failures = "\n".join(f"case {i}: {o.kind} <- {d}\n{o.detail}"
                         for i, d, o in report.failures)
    assert not report.failures, (f"{harness.summary(report)}\nreplay with: python fuzz/run.py "
                                 f"{fmt} --seed {SEED} --case N\n{failures}")
    assert report.cases == CASES
    # The mutations reach past the first checks: some mutants still load.
    assert report.kinds["weights_error"] > 0


def test_the_harness_sees_a_hang_a_memory_blow_up_and_a_raw_exception():
    """The harness itself can fail: each kind of bug is reported as such."""
    assert harness.run_in_child(lambda: time.sleep(60), 1 << 26, wall=1).kind == "hang"
    assert harness.run_in_child(lambda: bytearray(1 << 34), 1 << 26).kind == "memory"
    assert harness.run_in_child(lambda: {}["x"], 1 << 26).kind == "raw:KeyError"

    def spin():
        while True:
            pass

    assert harness.run_in_child(spin, 1 << 26, cpu=1).kind == "cpu"
    from mobilevec.errors import WeightsError

    def refuse():
        raise WeightsError("f", "no")

    assert harness.run_in_child(refuse, 1 << 26).kind == "weights_error"
    grown = harness.run_in_child(lambda: bytearray(b"x" * (48 << 20)), 1 << 30)
    assert grown.kind == "ok" and 40 << 20 < grown.rss_growth < 120 << 20
