"""What every trainer binary does around its one library call.

Flags common to all binaries, the process runtime from the config's `runtime` section,
`--data_dir` applied to every dataset section, and bad input reported as one clear line
(exit status 2) instead of a traceback.
"""
import contextlib
import logging
import sys

from absl import flags
from absl import logging as absl_logging

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import config as cfg
from dwlt_tf import convert, data, runtime, train

# Errors that mean "bad input": reported without a traceback.
USER_ERRORS = (cfg.ConfigError, data.DatasetNotFoundError, convert.CheckpointError,
               FileExistsError, FileNotFoundError, train.NonFiniteLossError, ValueError)


def define_common_flags():
    flags.DEFINE_string("workdir", None, "Output directory (resumes what is already there).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory for every dataset section "
                                          "(overrides the config's data_dir).")


def define_weights_flags(ticket_help=None):
    """--pretrained (required: converted weights) and, given its help text, --ticket."""
    flags.DEFINE_string("pretrained", None, "Converted pre-trained weights (convert_weights.py).")
    flags.mark_flag_as_required("pretrained")
    if ticket_help:
        flags.DEFINE_string("ticket", None, ticket_help)


def training_config(config, data_dir, sections):
    """A trainer's config with `--data_dir` applied and only `sections` allowed.

    Returns (config, its dataset as a DataSpec, its train section as a TrainSpec), all
    validated before any work starts.
    """
    config = apply_data_dir(config, data_dir)
    cfg.check_keys(config, sections, "config")
    return config, cfg.data_spec(config.dataset), cfg.train_spec(config.train)


def apply_data_dir(config, data_dir):
    """Sets `data_dir` on every dataset-like section (those with a `name` and `data_dir`)."""
    if not data_dir:
        return config

    def visit(section):
        if hasattr(section, "keys"):
            if "data_dir" in section and "name" in section and section["name"] != "imagefolder":
                section["data_dir"] = data_dir
            for key in list(section.keys()):
                visit(section[key])
    visit(config)
    return config


class _QuietRetracing(logging.Filter):
    # Each run of a study traces its own step functions once; TF counts those traces
    # across runs and warns about "retracing", which is expected here.
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def setup(config):
    """Configures TensorFlow from `config.runtime`; returns the distribution strategy."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow").addFilter(_QuietRetracing())
    section = cfg.to_dict(config.get("runtime", {})) or {}
    cfg.check_keys(section, ("strategy", "intra_op_threads", "inter_op_threads",
                             "deterministic"), "runtime")
    try:
        runtime.configure(section.get("intra_op_threads", 0), section.get("inter_op_threads", 1),
                          section.get("deterministic", False))
        return runtime.strategy(section.get("strategy", "auto"))
    except ValueError as e:
        raise cfg.ConfigError(f"runtime: {e}") from None


@contextlib.contextmanager
def reported(program):
    """Turns bad-input exceptions into `<program>: <message>` and exit status 2."""
    try:
        yield
    except USER_ERRORS as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        sys.exit(2)
