"""Smoke test of benchmarks/l0_fashion_resnet18.py on a tiny fake Fashion-MNIST.

No density or timing is asserted; the script's numbers come from running it on the real data.
"""

import pytest
from l0_helpers import write_fashion

fashion = pytest.importorskip("benchmarks.l0_fashion_resnet18")
pytestmark = pytest.mark.usefixtures("keep_threads")  # the scripts set one thread


def test_trains_purges_and_times_the_resnet(tmp_path, capsys):
    write_fashion(tmp_path / "fashion", gz=True, n_train=20, n_test=10)
    fashion.main(
        [
            "--data-dir",
            str(tmp_path / "fashion"),
            "--epochs",
            "1",
            "--subset",
            "20",
            "--test-subset",
            "10",
            "--rounds",
            "1",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert "target  expected  test-time" in out
    assert "purge: parameters" in out and "max |logit difference|" in out
    assert "speedup" in out and (tmp_path / "run" / "metrics.csv").is_file()
