"""`python -m benchmarks.gpu_check` runs: on a machine without a GPU it says so and exits 0, and
with its device checks switched to the CPU (tiny sizes) it runs every check and writes its report.
"""

from __future__ import annotations

import json

import pytest
from helpers import force_cpu_bn_path

from benchmarks import gpu_check


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path, capsys):
    # `python -m benchmarks.gpu_check` is `sys.exit(main())`; its `main` runs here, where no GPU
    # is visible (conftest.py hides them, as from child processes): no child spends its seconds
    # importing TensorFlow to print one line.
    assert gpu_check.main([f"--output={tmp_path / 'gpu_report.json'}"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        f"gpu_check: no GPU visible to TensorFlow {gpu_check.tf.__version__}; nothing to check."
    ]
    assert not (tmp_path / "gpu_report.json").exists()


@pytest.mark.slow
def test_on_the_cpu_every_check_runs_and_passes(tmp_path, capsys):
    output = tmp_path / "gpu_report.json"
    status = gpu_check.main(
        [
            "--device=CPU",
            "--size=32",
            "--batch=4",
            "--depth_multiplier=0.25",
            "--steps=2",
            "--demo_steps=10",
            "--layer_repeats=2",
            "--modes",
            "float32",
            "xla",
            f"--output={output}",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads(output.read_text())
    assert report["ok"] and list(report["modes"]) == ["float32", "xla"]
    for mode in report["modes"].values():
        # The GPU's BN kernels forced on the CPU: nothing but TensorFlow kernels in the step.
        assert mode["path_ok"] and mode["non_device_ops"] == []
        assert mode["loss_fell"] and mode["loss_last"] < mode["loss_first"]
        assert mode["ms_per_step"] > 0 and mode["first_call_s"] > 0
    assert report["layer"]["agree"] and report["layer"]["max_difference"]["dx"] < 1e-3
    assert "| mode | path | first call (s) | ms/step |" in printed
    assert "| float32 | ok |" in printed and "| xla | ok |" in printed


def test_the_path_check_sees_cpu_only_kernels():
    """Not vacuous: BN's CPU kernels (XLA loops) in a traced step are reported."""
    import tensorflow as tf

    from keras_bninception.layers import batch_norm

    x = tf.random.stateless_normal([64, 8, 8, 16], seed=(1, 2))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = batch_norm.batch_norm_train(x, tf.ones([16]), tf.zeros([16]), axis=3, epsilon=1e-3)[
                0
            ]
        return tape.gradient(y, x)

    with force_cpu_bn_path():
        graph = tf.function(step).get_concrete_function(x).graph.as_graph_def()
    assert any("loop" in found for found in gpu_check.non_device_ops(graph))
