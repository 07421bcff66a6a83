"""The section 4.2 re-run (`experiments.speedup`, `trainers.reproduce_speedup`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from helpers import run_python
from PIL import Image

from keras_bninception.experiments import plots, speedup


def _curves() -> list[dict]:
    """Hand-written curves (a unit test of the table, not a measurement)."""
    accuracy = {
        "inception": [0.2, 0.5, 0.6, 0.7],
        "bn_baseline": [0.3, 0.6, 0.7, 0.75],
        "bn_x5": [0.7, 0.8, 0.8, 0.85],
        "bn_x30": [0.5, 0.72, 0.9, 0.88],
        "bn_x5_sigmoid": [0.3, 0.4, 0.5, 0.6],
    }
    return [
        {"step": 10 * (i + 1), "network": n, "accuracy": a, "loss": 1.0}
        for n, values in accuracy.items()
        for i, a in enumerate(values)
    ]


def _summary(**changes) -> dict:
    """The run summary `speedup.write_outputs` expects, for the hand-written curves."""
    return {
        "dataset_description": "unit test",
        "num_train_examples": 1,
        "num_heldout_examples": 1,
        "depth_multiplier": 0.1,
        "batch_size": 32,
        "steps": 40,
        "evaluated_every": 10,
        "seed": 0,
        "target_accuracy": 0.7,
        "train_seconds": dict.fromkeys(speedup.NETWORKS, 1.0),
    } | changes


def test_table_steps_to_inception_final_accuracy_and_maximum():
    table = {r["recipe"]: r for r in speedup.speedup_table(_curves(), tuple(speedup.NETWORKS))}
    assert {r["target_accuracy"] for r in table.values()} == {0.7}
    assert [table[n]["steps_to_target"] for n in speedup.NETWORKS] == [40, 30, 10, 20, None]
    assert table["bn_x5"]["speedup"] == 4.0 and table["bn_x5_sigmoid"]["speedup"] is None
    assert (table["bn_x30"]["max_accuracy"], table["bn_x30"]["step_of_max"]) == (0.9, 30)
    assert table["bn_x5_sigmoid"]["paper_steps_to_72.2%"] is None
    assert table["bn_x30"]["paper_max_accuracy"] == 0.748


def test_training_split_evaluation_is_not_called_held_out():
    table = speedup.speedup_table(_curves(), tuple(speedup.NETWORKS))
    summary = _summary(num_heldout_examples=8, eval_held_out=False)
    text = speedup.markdown(table, summary)
    assert "held-out" not in text.replace("not held out", "")
    assert "8 training-split (not held out) images" in text
    assert "held-out images" in speedup.markdown(table, summary | {"eval_held_out": True})


def test_without_matplotlib_writes_tables_only(tmp_path, monkeypatch):
    rows = _curves()
    table = speedup.speedup_table(rows, tuple(speedup.NETWORKS))
    summary = _summary()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises.
    speedup.write_outputs({"rows": rows, "table": table, "summary": summary}, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [
        "speedup.csv",
        "speedup.json",
        "speedup.md",
        "speedup_curves.csv",
    ]
    text = (tmp_path / "speedup.md").read_text()
    assert "| network | accuracy at step 10 | steps to target |" in text
    assert "| BN-x5 | 70.0 % | 10 | 4.0× | 85.0 % (40) | 2.1M | 73.0 % |" in text
    assert "| BN-x5-Sigmoid | 30.0 % | not reached | — | 60.0 % (40) | never | 69.8 % |" in text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": 0}, "`steps` must be an integer >= 1; received steps=0"),
        ({"networks": ("bn_x5", "bn_x99")}, "`networks` must be some of"),
        ({"networks": ("bn_x5",)}, "including 'inception'"),
        ({"image_size": 16}, "image_size"),
    ],
)
def test_bad_options_one_clear_error(change, message):
    with pytest.raises(ValueError) as error:
        speedup.SpeedupConfig(**change).validate()
    assert message in str(error.value)


def test_unknown_dataset_fails_before_training():
    with pytest.raises(ValueError, match="no_such_dataset"):
        speedup.run(speedup.SpeedupConfig(dataset="no_such_dataset"))


def _binary(args: list[str]) -> subprocess.CompletedProcess:
    return run_python(["-m", "trainers.reproduce_speedup", *args], timeout=600)


def test_binary_tiny_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    result = _binary(
        [
            "--networks=inception,bn_x30",
            "--steps=4",
            "--eval_every=2",
            "--depth_multiplier=0.1",
            f"--output_dir={out}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == [
        "speedup.csv",
        "speedup.json",
        "speedup.md",
        "speedup.png",
        "speedup_curves.csv",
    ]
    with open(out / "speedup_curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [(int(r["step"]), r["network"]) for r in curves] == [
        (2, "inception"),
        (4, "inception"),
        (2, "bn_x30"),
        (4, "bn_x30"),
    ]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in curves)
    with open(out / "speedup.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["network"] for r in table] == ["Inception", "BN-x30"]
    assert float(table[0]["target_accuracy"]) == float(curves[1]["accuracy"])
    summary = json.loads((out / "speedup.json").read_text())
    assert summary["steps"] == 4 and summary["depth_multiplier"] == 0.1
    assert summary["recipes"]["bn_x30"]["learning_rate"] == pytest.approx(0.045)
    assert summary["recipes"]["inception"]["batch_norm"] is False
    with Image.open(out / "speedup.png") as image:
        assert image.format == "PNG" and image.size == plots.SIZE["speedup"]
    assert "| Inception |" in result.stdout


def test_binary_bad_steps_one_error_line(tmp_path):
    result = _binary(["--steps=0", f"--output_dir={tmp_path}"])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: `steps` must be an integer >= 1; received steps=0"]
