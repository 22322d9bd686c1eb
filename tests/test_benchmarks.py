"""The accelerator session's prepared check runs end to end here (tiny sizes), so it cannot rot before a GPU is lent."""

import json

import pytest
from fixtures import MNIST_DIR as DATA

from benchmarks import accelerator


@pytest.mark.float64
def test_accelerator_check_writes_precision_and_timings(tmp_path):
    out = tmp_path / "acc.json"
    accelerator.main(["--data-dir", DATA, "--out", str(out), "--test-size", "16", "--precision-examples", "8", "--repeats", "1"])
    res = json.loads(out.read_text())
    # On CPU float32 products are exact-rounded: the library's norms are float32-accurate, as an accelerator's must be.
    assert res["precision"]["library_float32_rel_err"]["max"] < 1e-5
    for p in ("2", "1", "inf"):
        assert res[f"margin_l{p}_test_set"]["examples"] == 16 and res[f"margin_l{p}_test_set"]["min_s"] > 0
