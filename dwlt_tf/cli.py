"""What every trainer binary does around its one library call.

Flags common to all binaries, the process runtime from the config's `runtime` section,
`--data_dir` applied to every dataset section, and bad input -- the project's
`errors.UserError`s, and flags or config overrides that do not parse -- reported as one
clear line with exit status 2. Anything else is a bug and keeps its traceback (exit 1).

  if __name__ == "__main__":
      app.run(main, flags_parser=cli.parse_flags)
"""
import ast
import contextlib
import logging
import os
import re
import sys

from absl import flags
from absl import logging as absl_logging

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import config as cfg
from dwlt_tf import checks, errors, files, preemption, runtime

# Errors that mean "bad input": reported without a traceback.
USER_ERRORS = (errors.UserError,)


def _program():
    return os.path.splitext(os.path.basename(sys.argv[0]))[0]


def fail(message, program=None):
    """Prints `<program>: error: <message>` and exits with status 2."""
    print(f"{program or _program()}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl's flag parsing, with bad flags and config overrides as one-line errors.

    ml_collections applies `--config.a.b=v` while parsing and raises AttributeError/
    KeyError for an unknown key and TypeError/ValueError for a value of the wrong type;
    absl raises flags.Error for unknown or missing flags. All are the user's input.
    """
    try:
        args = flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if "Traceback" in text:  # a config file that raised: its own message is the news
            lines = [line for line in text.splitlines() if line.strip()]
            text = f"{lines[0]} {lines[-1]}"
        fail(f"{text} (--helpfull lists the flags)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e)
        try:  # ml_collections wraps its KeyError's text in quotes, escaped
            text = ast.literal_eval(text) if text[:1] in "'\"" else text
        except (SyntaxError, ValueError):
            pass
        text = " ".join(str(text).split())
        if isinstance(e, (AttributeError, KeyError)):
            text = f"unknown key {text}"
        override = _override_named(argv, text)
        fail(f"bad --config{' override ' + override if override else ''}: {text}")
    # ml_collections defers a config file that cannot be loaded to its first use.
    if "config" in flags.FLAGS:
        try:
            flags.FLAGS.config.keys()
        except OSError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            fail(f"--config: {lines[-1] if lines else e}")
    return args


def _override_named(argv, text):
    """The `--config.a.b=v` argument whose path holds a key quoted in `text` (ml_collections
    names the key, not the flag); the only override when there is one; else None."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    quoted = set(re.findall(r"'([^']+)'", text))
    named = [a for a in overrides
             if quoted & set(a.split("=", 1)[0][len("--config."):].split("."))]
    if named:
        return named[-1]
    return overrides[0] if len(overrides) == 1 else None


def define_common_flags(overwrite=True):
    """--workdir and --data_dir, and (unless overwrite=False) --overwrite."""
    flags.DEFINE_string("workdir", None, "Output directory (resumes what is already there).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory for every dataset section "
                                          "(overrides the config's data_dir).")
    if overwrite:
        flags.DEFINE_bool("overwrite", False,
                          "If --workdir belongs to a run with other settings, move that run "
                          "to <workdir>.replaced-<time> and start afresh (never deletes).")


def define_weights_flags(ticket_help=None):
    """--pretrained (required: converted weights) and, given its help text, --ticket."""
    flags.DEFINE_string("pretrained", None, "Converted pre-trained weights (convert_weights.py).")
    flags.mark_flag_as_required("pretrained")
    if ticket_help:
        flags.DEFINE_string("ticket", None, ticket_help)


def _expand(path):
    return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))


def _creatable(flag, path):
    """Raises ConfigError unless `path` could be created: its nearest existing ancestor
    is a folder this process can write in."""
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise errors.ConfigError(f"--{flag}={path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise errors.ConfigError(f"--{flag}={path}: cannot create it, {parent} is not "
                                 "writable (read-only filesystem or no permission)")


def new_output(flag, path):
    """A file or folder the binary creates and never overwrites, checked before any work."""
    path = _expand(path)
    if os.path.lexists(path):
        raise errors.OutputExistsError(f"--{flag}={path}: already exists; outputs are never "
                                       "overwritten, choose a new path")
    _creatable(flag, path)
    return path


def output_dir(flag, path, writable=False):
    """A folder that may exist (a workdir to resume, an export base); with `writable`, one
    the binary will write in whatever it holds. Checked before any work."""
    path = _expand(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise errors.ConfigError(f"--{flag}={path}: is a file, not a folder")
        if writable and not os.access(path, os.W_OK):
            raise errors.ConfigError(f"--{flag}={path}: not writable (read-only filesystem "
                                     "or no permission)")
    else:
        _creatable(flag, path)
    return path


def output_file(flag, path):
    """A file the binary (re)writes, checked before any work."""
    path = _expand(path)
    if os.path.isdir(path):
        raise errors.ConfigError(f"--{flag}={path}: is a folder, not a file")
    if os.path.exists(path):
        if not os.access(path, os.W_OK) or not os.access(os.path.dirname(path), os.W_OK):
            raise errors.ConfigError(f"--{flag}={path}: not writable (read-only filesystem "
                                     "or no permission)")
    else:
        _creatable(flag, path)
    return path


def float_triple(name, values):
    """A flag list of 3 floats (e.g. --mean=0.485,0.456,0.406), None when not given."""
    if not values:
        return None
    try:
        triple = [float(v) for v in values]
    except ValueError:
        triple = []
    if len(triple) != 3:
        raise errors.ConfigError(f"--{name}={','.join(values)}: give 3 comma-separated numbers "
                                 "(one per RGB channel)")
    return triple


def seeds(config):
    """The config's `seeds` list (empty: one run with train.seed), validated."""
    values = config.get("seeds") or ()
    checks.int_tuple("seeds", values, low=0, distinct=True)
    return [checks.seed("seeds", s) for s in values]


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
                             "deterministic", "jit_compile"), "runtime")
    checks.choice("runtime.strategy", section.get("strategy", "auto"), runtime.STRATEGIES)
    runtime.configure(section.get("intra_op_threads", 0), section.get("inter_op_threads", 1),
                      section.get("deterministic", False), section.get("jit_compile", False))
    return runtime.strategy(section.get("strategy", "auto"))


@contextlib.contextmanager
def reported(program):
    """The boundary of every binary's work.

    Bad input -- the project's `errors.UserError`s, and writing to a full, read-only or
    forbidden location (`files.write_failure`) -- becomes `<program>: error: <message>`,
    exit status 2. SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 stop the work gracefully
    (`preemption.graceful`): `<program>: stopped by SIGTERM ...`, exit status 75.
    Anything else is a bug and keeps its traceback.
    """
    with preemption.graceful():
        try:
            yield
        except USER_ERRORS as e:
            fail(e, program)
        except preemption.Preempted as stop:
            print(f"{program}: {stop.message()}", file=sys.stderr)
            sys.exit(preemption.EXIT_STATUS)
        except Exception as e:  # pylint: disable=broad-except
            message = files.write_failure(e)
            if message is None:
                raise
            fail(message, program)
