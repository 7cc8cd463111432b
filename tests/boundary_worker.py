"""Runs one trainer binary on many argument lists in one process: the boundary test's engine.

  python tests/boundary_worker.py <binary.py> <cases.json> <results.json> <watched dir>...

Each case's arguments are parsed by the binary's own flag parser (`cli.parse_flags`) and
its `main` runs; the work itself -- training, exporting, attacking, converting, tuning --
is replaced by raising `ReachedWork`, so a case that gets there was *accepted*. For each
case the result records the exit status, what the binary printed (Python-level stderr
and stdout), a traceback if something else escaped, and the files that appeared in or
disappeared from the watched directories.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class ReachedWork(BaseException):
    """The case got past every check to the binary's real work."""


def _stop(what):
    def stop(*args, **kwargs):
        raise ReachedWork(what)
    return stop


def _patch_work():
    from dwlt_tf import audit, convert, export, imp, train, tune  # pylint: disable=import-outside-toplevel
    train._train = _stop("train")  # pylint: disable=protected-access
    train.fit = _stop("train")
    export.export = _stop("export")
    audit.audit_split = _stop("audit")
    convert.save_converted = _stop("convert")
    imp.baseline_ticket = _stop("prune")
    tune.TransferTuner.search = _stop("tune")


def _snapshot(roots):
    out = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                out.add(os.path.join(dirpath, name))
    return out


def main():
    binary, cases_path, results_path, *watched = sys.argv[1:]
    cases = json.load(open(cases_path))
    _patch_work()
    sys.argv = [binary]
    module = runpy.run_path(binary, run_name="boundary")
    from absl import flags  # pylint: disable=import-outside-toplevel
    from dwlt_tf import cli  # pylint: disable=import-outside-toplevel
    flag_values = flags.FLAGS
    results = []
    for case in cases:
        for name in list(flag_values):  # config overrides register flags per parse
            if name.startswith("config."):
                delattr(flag_values, name)
        flag_values.unparse_flags()
        argv = [binary] + case["args"]
        sys.argv = argv  # ml_collections finds the config overrides there
        before = _snapshot(watched)
        err, out = io.StringIO(), io.StringIO()
        status, bug = None, None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                cli.parse_flags(argv)
                module["main"]([binary])
                status = 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except ReachedWork as e:
                status = f"reached {e}"
            except BaseException:  # pylint: disable=broad-except
                bug = traceback.format_exc()
                status = 1
        after = _snapshot(watched)
        results.append({"id": case["id"], "status": status, "stderr": err.getvalue(),
                        "stdout": out.getvalue(), "bug": bug,
                        "new": sorted(after - before), "gone": sorted(before - after)})
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
