"""The Figure 1 re-run (`keras_bninception.experiments.figure1`, `trainers.reproduce_figure1`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from helpers import run_python
from PIL import Image

from keras_bninception.experiments import figure1, outputs, plots

TINY = figure1.Figure1Config(steps=24, eval_every=8, hidden_units=16, unit=3, seed=1)


@pytest.fixture(scope="module")
def tiny_result() -> dict:
    return figure1.run(TINY)


def test_tiny_run_writes_csv_json_and_pictures(tiny_result, tmp_path):
    written = figure1.write_outputs(tiny_result, str(tmp_path))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["figure1.csv", "figure1.json", "figure1a.png", "figure1bc.png"]

    with open(tmp_path / "figure1.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), r["network"]) for r in rows] == [
        (s, n) for n in figure1.NETWORKS for s in (8, 16, 24)
    ]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["p15"]) <= float(row["p50"]) <= float(row["p85"])

    summary = json.loads((tmp_path / "figure1.json").read_text())
    assert summary["dataset"] == "digits" and summary["steps"] == 24
    assert summary["followed_unit"] == "sigmoid_3[3]"
    assert summary["num_heldout_examples"] == 360
    for network in figure1.NETWORKS:
        assert set(summary["heldout_accuracy"][network]) == {"8", "16", "24"}
        drift = summary["percentile_drift_after_first_tenth"][network]
        assert set(drift) == {"p15", "p50", "p85", "max"} and drift["max"] >= 0

    for name in ("figure1a", "figure1bc"):
        with Image.open(tmp_path / f"{name}.png") as image:
            image.verify()
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == plots.SIZE[name]


def test_same_initial_weights_and_batches_for_both_networks():
    a = figure1.build_network(False, 64, 10, TINY)
    b = figure1.build_network(True, 64, 10, TINY)
    kernels = {w.path: w.numpy() for w in a.weights if "kernel" in w.path}
    assert len(kernels) == 4
    for w in b.weights:
        if "kernel" in w.path:
            np.testing.assert_array_equal(w.numpy(), kernels[w.path])
    order = figure1.training_order(100, 7, 30, seed=0)
    assert order.shape == (7, 30)
    # Every epoch is a permutation of the split.
    np.testing.assert_array_equal(np.sort(order.reshape(-1)[:100]), np.arange(100))


def test_without_matplotlib_csv_and_json_only(tiny_result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises.
    assert not plots.available()
    written = figure1.write_outputs(tiny_result, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["figure1.csv", "figure1.json"]
    assert len(written) == 2
    assert "pip install 'keras-bninception[plots]'" in plots.MISSING


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "cifar10"}, "`dataset` must be one of ['digits', 'mnist']"),
        ({"steps": 0}, "`steps` must be an integer >= 1; received steps=0"),
        ({"steps": -5}, "received steps=-5"),
        ({"unit": 100}, "`unit` must be in [0, 100)"),
    ],
)
def test_bad_options_one_clear_error(change, message):
    config = figure1.Figure1Config(**change)
    with pytest.raises(ValueError) as error:
        config.validate()
    assert message in str(error.value)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="`output_dir` must be a writable directory"):
        outputs.prepare_output_dir(str(blocker / "out"))
    assert outputs.prepare_output_dir(str(tmp_path / "new" / "dir")) == str(tmp_path / "new/dir")


def test_mnist_when_prepared_is_read_flat():
    """TFDS `mock_data` (offline) stands in for a prepared mnist."""
    import tensorflow_datasets as tfds

    with (
        tfds.testing.mock_data(num_examples=30),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        data = figure1.load_data("mnist")
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (30, 784)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() <= data.x_train.max() <= 1
    assert data.y_train.dtype == np.int32 and data.description == "TFDS mnist (28x28)"


def test_mnist_not_prepared_says_so(tmp_path):
    with pytest.raises(ValueError, match="needs TFDS mnist prepared locally"):
        figure1.load_data("mnist", data_dir=str(tmp_path))


def _binary(args: list[str], block_matplotlib: bool = False) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules['matplotlib'] = None; " if block_matplotlib else ""
    code = prelude + "from trainers import reproduce_figure1 as b; b.run()"
    return run_python(["-c", code, *args], timeout=600)


def test_binary_bad_input_one_error_line(tmp_path):
    result = _binary(["--dataset=svhn", f"--output_dir={tmp_path}"])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: `dataset` must be one of ['digits', 'mnist']; received dataset='svhn'"
    ]


@pytest.mark.slow
def test_default_settings_show_the_papers_claim(tmp_path):
    """The binary end to end without matplotlib, on the default settings (one process for both):
    Figure 1's claim, BN learns faster and its sigmoid input drifts less."""
    out = tmp_path / "out"
    result = _binary([f"--output_dir={out}"], block_matplotlib=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["figure1.csv", "figure1.json"]
    assert "pip install 'keras-bninception[plots]'" in result.stdout
    assert "With BN: held-out accuracy" in result.stdout

    summary = json.loads((out / "figure1.json").read_text())
    assert summary["steps"] == figure1.Figure1Config().steps
    early = str(min(int(s) for s in summary["heldout_accuracy"]["baseline"]))
    accuracy = summary["heldout_accuracy"]
    assert accuracy["batch_norm"][early] > accuracy["baseline"][early] + 0.2
    drift = summary["percentile_drift_after_first_tenth"]
    assert drift["batch_norm"]["max"] < 0.5 * drift["baseline"]["max"]
    assert summary["final_heldout_accuracy"]["batch_norm"] >= 0.9
