"""What the absl binaries share: problems end in one `error:` line on stderr and an exit status."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn

from absl import flags, logging


def fail(message: object, status: int = 1) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with `status`."""
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that reports a malformed flag in one line (exit status 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (see --helpfull)", status=2)


def console_script_help(module: ModuleType, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Lets `--help` of a console script (`bninception-train`) describe `module`, as under
    `python -m`: absl's help shows the `__main__` module's docstring and key flags, and a console
    script's `__main__` is pip's wrapper, which has neither."""
    main = sys.modules["__main__"]
    if main is module:
        return
    main.__doc__ = module.__doc__
    for flag in flag_values.get_key_flags_for_module(module.__name__):
        flag_values.register_key_flag_for_module(sys.argv[0], flag)


def no_arguments(argv: list[str]) -> None:
    """Every option is a --flag: positional arguments end the program (exit status 2)."""
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag", status=2)


def define_experiment_flags(
    defaults: object, output_dir: str, dataset_help: str, data_dir_help: str, evaluations: int
) -> None:
    """The flags every experiment binary has, with its configuration's `defaults`."""
    flags.DEFINE_string("output_dir", output_dir, "Where the pictures, tables and JSON go.")
    flags.DEFINE_string("dataset", defaults.dataset, dataset_help)
    flags.DEFINE_string("data_dir", None, data_dir_help)
    flags.DEFINE_integer("steps", defaults.steps, "Training steps of each network (same for all).")
    flags.DEFINE_integer(
        "eval_every", defaults.eval_every, f"Steps between evaluations; 0 = steps / {evaluations}."
    )
    flags.DEFINE_integer("seed", defaults.seed, "Seed of the initial weights and the data order.")


def run_experiment(
    argv: list[str],
    experiment: ModuleType,
    config_class: type,
    announce: Callable[[object], str],
    report: Callable[[dict], str],
) -> None:
    """The `main` of a `keras_bninception.experiments` binary (`reproduce_figure1`, ...).

    The configuration is `config_class` (a dataclass) with every field that has a flag of the
    same name set from it (list flags as tuples), validated; then `--output_dir` is checked,
    `announce(config)` printed, `experiment.run(config)` trained, `experiment.write_outputs`
    written and `report(result)` printed with the files written. A bad option, dataset or output
    directory, or a run that cannot go on (e.g. diverged), ends in one `error:` line (status 1).
    """
    from keras_bninception.experiments import outputs, plots
    from keras_bninception.training import TrainingError

    no_arguments(argv)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    values = {
        field.name: flags.FLAGS[field.name].value
        for field in dataclasses.fields(config_class)
        if field.name in flags.FLAGS
    }
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        config = config_class(**values).validate()
        output_dir = outputs.prepare_output_dir(flags.FLAGS.output_dir)
        print(announce(config), flush=True)
        result = experiment.run(config)
    except (ValueError, TrainingError) as e:
        # TrainingError: a network diverged (e.g. a learning rate raised by flags), or SIGTERM.
        fail(e)
    written = experiment.write_outputs(result, output_dir)
    print(report(result), flush=True)
    print("\n".join(f"Wrote {path}" for path in written), flush=True)
    if not plots.available():
        print(plots.MISSING, flush=True)


HELP_FLAGS = ("-h", "-help", "-?", "--help", "--helpshort", "--helpfull")


def parse_own_flags(flag_values: flags.FlagValues, argv: list[str], usage: str) -> list[str]:
    """Parses a binary's own `flag_values` (not absl's global set): `--help` prints `usage` and
    the flags (exit status 0); a malformed flag is one `error:` line (exit status 2)."""
    flags.FLAGS(argv[:1])  # absl's own (logging) flags at their defaults
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(usage.strip() + "\n\nflags:\n" + flag_values.get_help())
        sys.exit(0)
    try:
        return flag_values(argv)
    except flags.Error as e:
        fail(f"{e} (see --help)", status=2)
