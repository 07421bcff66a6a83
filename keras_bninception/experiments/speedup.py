"""Section 4.2 at small scale: how much sooner the BN networks reach the Inception accuracy.

The paper's five networks, each trained by the project's trainer (`keras_bninception.training`)
with its `--recipe` preset (`training.RECIPES`), on the same data, seed and step budget:

| network       | recipe          | BN  | activation | learning rate | dropout | L2   | decay      |
|---------------|-----------------|-----|------------|---------------|---------|------|------------|
| Inception     | `inception`     | no  | ReLU       | 0.0015        | 0.4     | 4e-5 | /8 epochs  |
| BN-Baseline   | `bn_baseline`   | yes | ReLU       | 0.0015        | 0.4     | 4e-5 | /8 epochs  |
| BN-x5         | `bn_x5`         | yes | ReLU       | 0.0075        | 0       | 8e-6 | 6x faster  |
| BN-x30        | `bn_x30`        | yes | ReLU       | 0.045         | 0       | 8e-6 | 6x faster  |
| BN-x5-Sigmoid | `bn_x5_sigmoid` | yes | sigmoid    | 0.0075        | 0       | 8e-6 | 6x faster  |

Every `eval_every` steps each network is evaluated on the held-out split (`Trainer.train` up to
the step, `Trainer.evaluate`, continue). The table is the paper's: the steps each network needs to
reach the Inception network's final held-out accuracy, and each network's maximum accuracy.

What is scaled down, and why: the data (`digits` by default: 1,437 training images, upsampled to
`image_size`), the width (`depth_multiplier`) and the number of steps, so that the five networks
train in minutes on two CPU cores. Not in a recipe and set here: `bn_momentum` 0.9 (Keras' 0.99
makes the moving statistics that evaluation uses lag by hundreds of steps, longer than these
runs' evaluation interval).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import keras
from absl import logging

from keras_bninception import data as data_lib
from keras_bninception.training import RECIPES, TrainConfig, apply_recipe, build_trainer

NETWORKS = {
    "inception": "Inception",
    "bn_baseline": "BN-Baseline",
    "bn_x5": "BN-x5",
    "bn_x30": "BN-x30",
    "bn_x5_sigmoid": "BN-x5-Sigmoid",
}
BASELINE = "inception"
# The paper's Figure 3 (ImageNet, single crop, top-1): steps to 72.2 % and maximum accuracy.
PAPER = {
    "inception": ("31.0M", 0.722),
    "bn_baseline": ("13.3M", 0.727),
    "bn_x5": ("2.1M", 0.730),
    "bn_x30": ("2.7M", 0.748),
    "bn_x5_sigmoid": (None, 0.698),
}


@dataclasses.dataclass(frozen=True)
class SpeedupConfig:
    """Options of a section 4.2 re-run (what every network shares)."""

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int = 32
    depth_multiplier: float = 0.25
    steps: int = 1500
    eval_every: int = 0  # 0: steps / 15 (at least 1).
    bn_momentum: float = 0.9
    seed: int = 0
    networks: tuple[str, ...] = tuple(NETWORKS)

    def validate(self) -> SpeedupConfig:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1; received steps={self.steps!r}")
        if isinstance(self.eval_every, bool) or self.eval_every < 0:
            raise ValueError(
                f"`eval_every` must be an integer >= 0 (0: steps / 15); "
                f"received eval_every={self.eval_every!r}"
            )
        unknown = [n for n in self.networks if n not in NETWORKS]
        if unknown or not self.networks or BASELINE not in self.networks:
            raise ValueError(
                f"`networks` must be some of {list(NETWORKS)}, including '{BASELINE}' (the "
                f"target accuracy is its final one); received networks={list(self.networks)}"
            )
        # The rest (image size, depth multiplier, seed, ...) is checked by TrainConfig.
        self.train_config(BASELINE).validate()
        return self

    @property
    def evaluation_steps(self) -> list[int]:
        every = self.eval_every or max(1, self.steps // 15)
        points = list(range(every, self.steps + 1, every))
        if not points or points[-1] != self.steps:
            points.append(self.steps)
        return points

    def train_config(self, network: str, model_dir: str = "unused") -> TrainConfig:
        """The trainer's configuration of `network`: its recipe over the shared options."""
        shared = TrainConfig().replace(
            dataset=self.dataset,
            data_dir=self.data_dir,
            image_size=self.image_size,
            model_dir=model_dir,
            train_steps=self.steps,
            depth_multiplier=self.depth_multiplier,
            bn_momentum=self.bn_momentum,
            seed=self.seed,
            checkpoint_every=self.steps,
            keep_checkpoints=1,
            log_every=self.evaluation_steps[0],
        )
        return apply_recipe(shared, network)


def run(config: SpeedupConfig) -> dict:
    """Trains every network of `config`; returns {"rows": the curves, "table", "summary"}.

    Raises:
        ValueError: a bad option or dataset (`keras_bninception.data.DataError` is one).
    """
    config.validate()
    info = data_lib.get_info(config.dataset, data_dir=config.data_dir)
    rows: list[dict] = []
    seconds = {}
    for network in config.networks:
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"speedup-{network}-") as model_dir:
            train_config = config.train_config(network, model_dir)
            keras.utils.set_random_seed(config.seed)  # The same initial weights where possible.
            trainer, train_fn, eval_fn = build_trainer(train_config, info)
            try:
                for step in config.evaluation_steps:
                    trainer.train(train_fn, step)
                    metrics = trainer.evaluate(eval_fn)
                    rows.append(
                        {
                            "step": step,
                            "network": network,
                            "accuracy": round(metrics["top_1_accuracy"], 6),
                            "loss": round(metrics["loss"], 6),
                        }
                    )
            finally:
                trainer.close()
        seconds[network] = round(time.perf_counter() - began, 1)
        logging.info("Speed-up: %s, %d steps, %.1f s.", network, config.steps, seconds[network])
    table = speedup_table(rows, config.networks)
    summary = {
        "dataset": info.name,
        "dataset_description": _describe(info, config),
        "num_train_examples": info.num_train_examples,
        "num_heldout_examples": info.num_eval_examples,
        # False for an image folder without a validation split: evaluated on training images.
        "eval_held_out": info.eval_held_out,
        "steps": config.steps,
        "batch_size": config.train_config(BASELINE).trainer.batch_size,
        "image_size": config.image_size,
        "depth_multiplier": config.depth_multiplier,
        "evaluated_every": config.evaluation_steps[0],
        "seed": config.seed,
        "target_accuracy": table[0]["target_accuracy"],
        "recipes": {n: dict(RECIPES[n]) for n in config.networks},
        "train_seconds": seconds,
    }
    return {"rows": rows, "table": table, "summary": summary}


def evaluated_on(summary: dict) -> str:
    """What the accuracies were measured on: "held-out", or the training split, said plainly."""
    return "held-out" if summary.get("eval_held_out", True) else "training-split (not held out)"


def _describe(info: data_lib.DatasetInfo, config: SpeedupConfig) -> str:
    name = "scikit-learn digits" if info.name == data_lib.DIGITS else info.name
    return f"{name} at {config.image_size}x{config.image_size}"


def speedup_table(rows: list[dict], networks: tuple[str, ...]) -> list[dict]:
    """Per network: steps to reach Inception's final accuracy, and the maximum accuracy.

    `steps_to_target` is the first evaluated step at which the held-out accuracy is at least the
    Inception network's final one (None: never within the budget); `speedup` is Inception's
    `steps_to_target` divided by the network's.
    """
    curves = {n: [r for r in rows if r["network"] == n] for n in networks}
    target = curves[BASELINE][-1]["accuracy"]
    reached = {
        n: next((r["step"] for r in curve if r["accuracy"] >= target), None)
        for n, curve in curves.items()
    }
    table = []
    for network, curve in curves.items():
        best = max(curve, key=lambda r: r["accuracy"])
        steps = reached[network]
        paper_steps, paper_max = PAPER[network]
        table.append(
            {
                "network": NETWORKS[network],
                "recipe": network,
                "target_accuracy": target,
                "steps_to_target": steps,
                "speedup": (
                    round(reached[BASELINE] / steps, 2) if steps and reached[BASELINE] else None
                ),
                "first_step": curve[0]["step"],
                "first_accuracy": curve[0]["accuracy"],
                "max_accuracy": best["accuracy"],
                "step_of_max": best["step"],
                "final_accuracy": curve[-1]["accuracy"],
                "paper_steps_to_72.2%": paper_steps,
                "paper_max_accuracy": paper_max,
            }
        )
    return table


def markdown(table: list[dict], summary: dict) -> str:
    """speedup.md: the measured table beside the paper's."""

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f} %"

    def count(value: int | None) -> str:
        return "not reached" if value is None else f"{value:,}"

    target = summary["target_accuracy"]
    lines = [
        "# Section 4.2 re-run at small scale",
        "",
        f"{summary['dataset_description']} ({summary['num_train_examples']:,} training / "
        f"{summary['num_heldout_examples']:,} {evaluated_on(summary)} images), BN-Inception "
        "with depth multiplier "
        f"{summary['depth_multiplier']}, batch {summary['batch_size']}, "
        f"{summary['steps']:,} steps per network, evaluated every {summary['evaluated_every']} "
        f"steps, seed {summary['seed']}. Target: Inception's final {evaluated_on(summary)} "
        "accuracy, "
        f"{pct(target)} (the paper's: 72.2 %).",
        "",
        f"| network | accuracy at step {table[0]['first_step']:,} | steps to target | speed-up "
        "| max accuracy (at step) | paper: steps to 72.2 % | paper: max accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        speedup = "—" if row["speedup"] is None else f"{row['speedup']:.1f}×"
        lines.append(
            f"| {row['network']} | {pct(row['first_accuracy'])} | "
            f"{count(row['steps_to_target'])} | {speedup} | "
            f"{pct(row['max_accuracy'])} ({row['step_of_max']:,}) | "
            f"{row['paper_steps_to_72.2%'] or 'never'} | {pct(row['paper_max_accuracy'])} |"
        )
    seconds = ", ".join(f"{NETWORKS[n]} {s:.0f} s" for n, s in summary["train_seconds"].items())
    lines += ["", f"Training time per network: {seconds}.", ""]
    return "\n".join(lines)


def write_outputs(result: dict, output_dir: str) -> list[str]:
    """Writes speedup.csv (the table), speedup_curves.csv, speedup.md, speedup.json and, with
    matplotlib, speedup.png; returns the paths."""
    from keras_bninception.experiments import outputs, plots

    rows, table, summary = result["rows"], result["table"], result["summary"]
    path = lambda name: os.path.join(output_dir, name)  # noqa: E731
    written = [
        outputs.write_csv(path("speedup.csv"), table),
        outputs.write_csv(path("speedup_curves.csv"), rows),
        outputs.write_text(path("speedup.md"), markdown(table, summary)),
        outputs.write_json(path("speedup.json"), {**summary, "table": table}),
    ]
    if plots.available():
        labels = {n: NETWORKS[n] for n in summary["train_seconds"]}
        written.append(plots.speedup(rows, summary, labels, path("speedup.png")))
    return written
