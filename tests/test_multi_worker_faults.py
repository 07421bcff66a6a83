"""A worker of a two-process `MultiWorkerMirroredStrategy` run is lost: the other one stops.

Worker 1 is frozen with SIGSTOP once it has joined the cluster: a hung process or a machine gone
from the network, whose sockets stay open (a killed local process would reset them at once). Its
heartbeats stop, and worker 0, waiting for it in a collective, must exit within
`--worker_timeout_seconds` (plus the time to reach its next collective and to exit) with one error
line naming the worker and the timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO_ROOT, free_ports, subprocess_env

from keras_bninception.training import TrainingError
from keras_bninception.training.strategy import explain_worker_failure, get_strategy

WORKER_TIMEOUT = 5
# Reaching the next collective (model building) and exiting, on a loaded 2-core machine.
SLACK = 30
JOINED = "MultiWorkerMirroredStrategy with cluster_spec"  # logged once the worker has joined


def _wait_for(path: str, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            if text in f.read():
                return
        assert process.poll() is None, f"worker exited early: {open(path).read()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged in {timeout} s")


@pytest.mark.slow
def test_a_lost_worker_stops_the_other_within_the_timeout(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes, logs = [], []
    args = [
        "--distribution_strategy=multi_worker_mirrored",
        "--dataset=digits",
        "--image_size=32",
        "--depth_multiplier=0.1",
        "--batch_size=8",
        "--seed=1",
        "--train_steps=100000",
        f"--worker_timeout_seconds={WORKER_TIMEOUT}",
        f"--model_dir={tmp_path / 'run'}",
    ]
    try:
        for i in range(2):
            logs.append(str(tmp_path / f"worker{i}.err"))
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            with open(logs[i], "w") as err:  # a file, not a pipe that could fill and block
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trainers.train", *args],
                        cwd=REPO_ROOT,
                        env=subprocess_env(TF_CONFIG=tf_config),
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        _wait_for(logs[1], JOINED, processes[1], timeout=240)
        os.kill(processes[1].pid, signal.SIGSTOP)
        frozen = time.monotonic()
        status = processes[0].wait(timeout=WORKER_TIMEOUT + SLACK + 60)
        elapsed = time.monotonic() - frozen
        print(f"worker 0 exited {elapsed:.1f} s after worker 1 froze")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    with open(logs[0]) as f:
        stderr = f.read()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 1, stderr[-3000:]
    assert elapsed < WORKER_TIMEOUT + SLACK, (elapsed, stderr[-3000:])
    assert errors == [
        "error: Lost worker /job:worker/replica:0/task:1: no heartbeat for 5 s "
        "(--worker_timeout_seconds=5); it died, hangs or is unreachable. This worker stops too; "
        "restart every worker with the same command to resume from the last checkpoint."
    ], stderr[-3000:]


def test_a_broken_connection_names_the_worker():
    error = RuntimeError(
        "Graph execution error:\n\nAdditional GRPC error information from remote target "
        "/job:worker/replica:0/task:1 while calling /tensorflow.WorkerService/RecvBuf:\n"
        ':UNKNOWN:Error received from peer {grpc_message:"recvmsg:Connection reset by peer"}'
    )
    lost = explain_worker_failure(error, 60)
    assert isinstance(lost, TrainingError)
    assert str(lost).startswith(
        "Lost worker /job:worker/replica:0/task:1: the connection to it broke (Connection reset "
        "by peer); its process probably died"
    )
    assert explain_worker_failure(RuntimeError("Invalid JPEG data"), 60) is None


@pytest.mark.parametrize("timeout", [0, -1.5])
def test_worker_timeout_must_be_positive(timeout):
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"`worker_timeout_seconds` must be > 0; received worker_timeout_seconds={timeout}"
        ),
    ):
        get_strategy("one_device", worker_timeout_seconds=timeout)
