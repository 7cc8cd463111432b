"""Every user mistake at every binary's boundary is one line, status 2, and writes nothing.

The test walks every trainer binary and
* every key of its config (the variant its docstring's quickstart uses): a wrong-typed
  value and an out-of-range value each (booleans: wrong-typed only);
* its other flags: wrong-typed / out-of-range values;
* each path flag with the path faults that apply -- missing, read-only, a file where a
  folder goes, a folder where a file goes, corrupt (a damaged checkpoint, weights file,
  ticket, run record or export).
Each case must exit with status 2 after printing exactly one line,
`<binary>: error: <message>`, that names the key (its section and name), the flag or the
path; no traceback; no file appears or disappears in the test's sandbox (inputs and
outputs live there). The work itself (training, export, attacks, conversion) is stubbed
out by tests/boundary_worker.py, so a case that reaches it is a bad value accepted.

Cases (counted when the test runs; this was the count when it last changed): 732.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import tf_keras

from conftest import BUNDLED_CIFAR, REPO, load_config
from dwlt_tf import (attacks, convert, data, export, models, pruning, pruning_wrapper, tickets,
                     runs, train, transfer)

WORKER = os.path.join(REPO, "tests", "boundary_worker.py")

# An out-of-range value for every config key, by (key name, type of its default value).
OUT_OF_RANGE = {
    ("epochs", int): "0", ("batch_size", int): "0", ("eval_batch_size", int): "-5",
    ("lr", float): "0.0", ("momentum", float): "-0.5", ("weight_decay", float): "-1.0",
    ("schedule", str): "linear", ("milestones", tuple): "(0,)", ("gamma", float): "0.0",
    ("warmup_epochs", int): "-1", ("eval_start_epoch", int): "-1", ("seed", int): "-1",
    ("precision", str): "float8", ("verbose", int): "3", ("checkpoint_every_steps", int): "-1",
    ("log_every_steps", int): "-1", ("mode", str): "trades", ("eps", float): "2.0",
    ("eps", type(None)): "2.0", ("step_size", float): "0.0", ("steps", int): "0",
    ("name", str): "mnist", ("data_dir", str): "/elsewhere/tensorflow_datasets",
    ("path", str): "/nonexistent/images", ("data_rate", float): "1.5",
    ("classes", tuple): "(99,)", ("image_size", int): "8", ("augment", str): "autoaugment",
    ("stats", str): "mnist", ("val_fraction", float): "1.0", ("strategy", str): "tpu",
    ("intra_op_threads", int): "-1", ("inter_op_threads", int): "-1", ("seeds", tuple): "(1, 1)",
    ("rounds", int): "0", ("fraction", float): "1.0", ("prunable", tuple): "('bn',)",
    ("oracle", str): "grid", ("objective", str): "val_loss", ("sa", float): "-1.0",
    ("ra", float): "-1.0", ("type", str): "set", ("min", float): "1.0", ("max", float): "1e-09",
    ("min", int): "9", ("max", int): "0", ("sampling", str): "cubic", ("values", list): "[]",
    ("max_trials", int): "0", ("max_epochs", int): "0", ("arch", str): "resnet7",
    ("stem", str): "vit", ("base_width", int): "0", ("imp_mode", str): "trades",
    ("init", str): "nonexistent", ("tickets", tuple): "(9,)", ("datasets", tuple): "('mnist',)",
    ("data_rates", tuple): "(1.5,)", ("tolerance", float): "-1.0", ("rule", str): "sigma",
    ("version", int): "0", ("methods", tuple): "('snip',)", ("rounds", tuple): "(9,)",
    ("apgd_steps", int): "0", ("square_queries", int): "0", ("examples", int): "-1",
    ("version", str): "robustbench", ("fab_steps", int): "0", ("target_classes", int): "0",
    ("square_p_init", float): "0.0", ("heartbeat_seconds", float): "0.0",
    ("stale_seconds", float): "1.0", ("cluster", str): "pbs", ("gpus_per_cell", int): "-1",
    ("cpus_per_cell", int): "0", ("mem_gb", int): "0", ("timeout_min", int): "0",
    ("max_parallel", int): "0", ("nodes", int): "0", ("tasks_per_node", int): "0",
    ("retries", int): "-1", ("margin", float): "-1.0", ("confidence", float): "1.0",
    ("resamples", int): "10", ("classes", type(None)): "(99,)", ("subset", str): "random",
    ("pattern", str): "4:2", ("method", str): "omp", ("test_examples", int): "-1",
}
# Free-form strings: any text is a valid value at the config boundary (a SLURM partition
# name, a folder for job logs); the engine using them reports what it cannot use.
FREE_FORM = {"partition", "folder"}
# A wrong-typed value, by the type of the key's default value.
WRONG_TYPE = {int: "abc", float: "abc", type(None): "abc", bool: "maybe", str: "3",
              list: "abc", tuple: None}  # tuples: by what they hold (see _wrong_type)


def _leaves(config, prefix=""):
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys") and not isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _wrong_type(value):
    if isinstance(value, tuple):  # a tuple flag holds whatever it is given: check entries
        return "('a',)" if (value and isinstance(value[0], int)) or not value else "(3,)"
    return WRONG_TYPE[type(value)]


def _config_cases(binary, config_arg, variant_config, base):
    cases = []
    for path, value in _leaves(variant_config):
        leaf = path.split(".")[-1]
        if leaf in FREE_FORM:
            continue
        values = [("wrong type", _wrong_type(value))]
        if not isinstance(value, bool):
            key = (leaf, type(value))
            assert key in OUT_OF_RANGE, f"{binary}: no out-of-range value for {path} {key}"
            values.append(("out of range", OUT_OF_RANGE[key]))
        for kind, bad in values:
            case = {"id": f"{binary} --config.{path}={bad} ({kind})",
                    "args": [config_arg] + base + [f"--config.{path}={bad}"],
                    "names": [path.split(".")[-2], leaf] if "." in path else [leaf]}
            if leaf in ("path", "data_dir"):  # or the path itself, as the user wrote it
                case["or_names"] = [[os.path.join(REPO, bad)]]
            cases.append(case)
    return cases


# ------------------------------------------------------------------------ sandbox

def _converted(root, name, classes=5, arch="resnet18"):
    tf_keras.utils.set_random_seed(0)
    model = models.build_resnet(arch, classes, "cifar", base_width=8)
    meta = {"source": "test", "source_sha256": "1" * 64, "format": "dwlt_tf", "arch": arch,
            "stem": "cifar", "base_width": 8, "num_classes": classes, "mean": [0.5] * 3,
            "std": [0.25] * 3, "normalization": "test", "masked": False}
    path = convert.save_converted(str(root / name), convert.Converted(model, {}, meta))
    kernels = pruning_wrapper.get_kernels(pruning_wrapper.wrap(model))
    return path, pruning.one_shot_magnitude_masks(kernels, 0.5)


def _truncate(path):
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 3])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Inputs (good and damaged) and a read-only folder, all under one root."""
    root = tmp_path_factory.mktemp("boundary")
    paths = {"root": root}
    paths["weights"], masks = _converted(root, "weights")
    paths["ticket"] = tickets.save(str(root / "ticket"), masks, {"source_sha256": "1" * 64})
    _, other = _converted(root / "other", "weights", arch="resnet34")
    paths["ticket_other_arch"] = tickets.save(str(root / "ticket_other_arch"), other)
    shutil.rmtree(root / "other")
    # A finished transfer run and its export.
    spec = train.TrainSpec(epochs=1, batch_size=64, lr=0.05, eval_attack=attacks.Attack(
        8 / 255, 2 / 255, 1), verbose=0)
    dataset = data.DataSpec("imagefolder", path=BUNDLED_CIFAR, image_size=32, augment="cifar",
                            stats="cifar10", classes=(5, 6, 7, 8, 9), data_rate=0.1)
    transfer.run(paths["weights"], paths["ticket"], dataset, spec, str(root / "run"))
    paths["run"] = str(root / "run")
    run = runs.open_run(paths["run"])
    export.export_run(run, str(root / "export"), 1, splits=data.load(dataset), log=lambda _: 0)
    paths["export"] = str(root / "export" / "1")
    # A PyTorch checkpoint (torchvision layout) for the converter.
    import torch  # pylint: disable=import-outside-toplevel
    from torch_resnet import ResNet  # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    paths["pth"] = str(root / "resnet18.pth")  # 1000 classes: ImageNet's normalization
    torch.save(ResNet("resnet18", 1000, "cifar", 8).state_dict(), paths["pth"])
    # Damaged copies.
    for name in ("weights", "ticket", "run"):
        for damage in ("bad", "bad2"):
            shutil.copytree(paths[name], root / f"{name}_{damage}")
    _truncate(root / "weights_bad" / convert.WEIGHTS_FILE)
    (root / "weights_bad2" / convert.META_FILE).write_text("{not json")
    _truncate(root / "ticket_bad" / tickets.MASKS_FILE)
    (root / "ticket_bad2" / tickets.META_FILE).write_text("")
    (root / "run_bad" / train.RESULT_FILE).write_text("{not json")
    os.remove(root / "run_bad2" / train.RESULT_FILE)  # unfinished
    shutil.copytree(paths["export"], root / "export_bad" / "1")
    _truncate(root / "export_bad" / "1" / "saved_model.pb")
    shutil.copytree(paths["export"], root / "export_bad2" / "1")
    shutil.rmtree(root / "export_bad2" / "1" / "variables")
    (root / "text.pth").write_text("this is a text file, not a checkpoint\n")
    (root / "afile").write_text("a regular file\n")
    (root / "empty_dir").mkdir()
    readonly = root / "readonly"
    readonly.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a read-only bind mount
        ok = subprocess.run(["mount", "--bind", str(readonly), str(readonly)]).returncode == 0 \
            and subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)]).returncode == 0
        paths["readonly"] = str(readonly) if ok else None
    else:
        os.chmod(readonly, 0o555)
        paths["readonly"] = str(readonly)
    yield {k: str(v) if v is not None else None for k, v in paths.items()}
    if os.geteuid() == 0 and paths["readonly"]:
        subprocess.run(["umount", str(readonly)])
    else:
        os.chmod(readonly, 0o755)


# ------------------------------------------------------------------------- cases

def _path_cases(binary, flag, base, faults, sandbox):
    """Cases for path flag `flag` with each fault in `faults`: {fault: path}."""
    cases = []
    for fault, path in faults.items():
        if path is None:
            continue  # e.g. no read-only folder can be made here
        args = [a for a in base if not a.startswith(f"--{flag}=")] + [f"--{flag}={path}"]
        cases.append({"id": f"{binary} --{flag} {fault}", "args": args, "names": [path]})
    return cases


def _flag_cases(binary, base, bad_values):
    cases = []
    for flag, values in bad_values.items():
        for value in values:
            args = [a for a in base if not a.startswith(f"--{flag}=")] + [f"--{flag}={value}"]
            cases.append({"id": f"{binary} --{flag}={value}", "args": args, "names": [flag]})
    return cases


def _all_cases(s):
    root = s["root"]
    out_dir = f"{root}/new_output"  # never created by a failing case
    readonly_child = f"{s['readonly']}/out" if s["readonly"] else None
    file_child = f"{root}/afile/out"
    weights_faults = {"missing": f"{root}/missing_weights", "a file": f"{root}/afile",
                      "corrupt weights": f"{root}/weights_bad",
                      "corrupt record": f"{root}/weights_bad2", "not weights": s["ticket"]}
    ticket_faults = {"missing": f"{root}/missing_ticket", "a file": f"{root}/afile",
                     "corrupt masks": f"{root}/ticket_bad", "corrupt record": f"{root}/ticket_bad2",
                     "not a ticket": f"{root}/empty_dir",
                     "another architecture": s["ticket_other_arch"]}
    workdir_faults = {"a file": f"{root}/afile", "under a file": file_child,
                      "read-only": readonly_child}
    run_faults = {"missing": f"{root}/missing_run", "a file": f"{root}/afile",
                  "not a run": f"{root}/empty_dir", "corrupt record": f"{root}/run_bad",
                  "unfinished": f"{root}/run_bad2"}
    output_faults = {"exists": s["ticket"], "a file": f"{root}/afile",
                     "under a file": file_child, "read-only": readonly_child}
    cases = {}

    # convert_weights
    base = [f"--checkpoint={s['pth']}", "--arch=resnet18", "--stem=cifar",
            f"--output={out_dir}"]
    cases["convert_weights"] = (
        _path_cases("convert_weights", "checkpoint", base, {
            "missing": f"{root}/missing.pth", "a folder": f"{root}/empty_dir",
            "corrupt": f"{root}/text.pth"}, s)
        + _path_cases("convert_weights", "output", base, output_faults, s)
        + _flag_cases("convert_weights", base, {"arch": ["resnet7"], "stem": ["vit"],
                                                "mean": ["0.5,abc,0.5", "0.5,0.5"],
                                                "std": ["0,0,0", "1,1"]}))
    # transfer / imp / tune: config keys, weights, ticket, workdir
    for binary, config, variant, extra in (
            ("transfer", "transfer", "local", []), ("imp", "imp", "local", []),
            ("tune", "tune", "local", [])):
        base = [f"--pretrained={s['weights']}", f"--workdir={out_dir}"]
        config_arg = f"--config=configs/{config}.py:{variant}"
        cases[binary] = (
            _config_cases(binary, config_arg, load_config(config, variant), base)
            + _path_cases(binary, "pretrained", [config_arg] + base, weights_faults, s)
            + _path_cases(binary, "workdir", [config_arg] + base, workdir_faults, s)
            + _path_cases(binary, "config", base, {
                "missing": f"{root}/configs/nope.py", "a folder": f"{root}/empty_dir"}, s))
        if binary != "imp":
            cases[binary] += _path_cases(binary, "ticket", [config_arg] + base, ticket_faults, s)
    # TFDS data: a data_dir without the dataset, a file as data_dir.
    tfds_base = ["--config=configs/transfer.py:std_cifar10", f"--pretrained={s['weights']}",
                 f"--workdir={out_dir}"]
    cases["transfer"] += _path_cases("transfer", "data_dir", tfds_base, {
        "missing": f"{root}/no_tfds", "a file": f"{root}/afile",
        "without the dataset": f"{root}/empty_dir"}, s)
    cases["transfer"] += _path_cases("transfer", "config.dataset.path",
                                     ["--config=configs/transfer.py:local"] + tfds_base[1:], {
                                         "a file": f"{root}/afile",
                                         "no class folders": f"{root}/empty_dir"}, s)
    # prune
    base = [f"--pretrained={s['weights']}", "--method=omp", f"--like={s['ticket']}",
            f"--output={out_dir}"]
    cases["prune"] = (
        _path_cases("prune", "pretrained", base, weights_faults, s)
        + _path_cases("prune", "like", base, ticket_faults, s)
        + _path_cases("prune", "output", base, output_faults, s)
        + _flag_cases("prune", base, {"seed": ["-1", "abc"], "method": ["snip"]})
        + _flag_cases("prune", [a for a in base if not a.startswith("--like")],
                      {"sparsity": ["1.5", "-0.1", "abc"]}))
    # evaluate
    base = [f"--run={s['run']}", "--steps=1"]
    cases["evaluate"] = (
        _path_cases("evaluate", "run", base, run_faults, s)
        + _flag_cases("evaluate", base, {"batch_size": ["0", "-4", "abc"], "steps": ["-1"],
                                         "eps": ["2", "abc"], "step_size": ["0", "-1"],
                                         "split": ["holdout"], "checkpoint": ["last"]}))
    # export
    base = [f"--checkpoint={s['run']}", f"--export_dir={out_dir}", "--version=1"]
    cases["export"] = (
        _path_cases("export", "checkpoint", base, run_faults, s)
        + _path_cases("export", "export_dir", base, {
            "a file": f"{root}/afile", "under a file": file_child,
            "read-only": s["readonly"]}, s)
        + _flag_cases("export", base, {"version": ["0", "-1", "abc"], "weights": ["best"]})
        + [{"id": "export existing version", "names": [f"{root}/export/1"],
            "args": [f"--checkpoint={s['run']}", f"--export_dir={root}/export", "--version=1"]}])
    # audit
    base = [f"--run={s['run']}", "--examples=5"]
    cases["audit"] = (
        _path_cases("audit", "run", base, run_faults, s)
        + _path_cases("audit", "export", ["--examples=5"], {
            "missing": f"{root}/missing_export/1", "a file": f"{root}/afile",
            "not an export": f"{root}/empty_dir",
            "truncated saved_model.pb": f"{root}/export_bad/1",
            "no variables": f"{root}/export_bad2/1"}, s)
        + _flag_cases("audit", base, {"eps": ["2", "-0.1"], "apgd_steps": ["0", "abc"],
                                      "square_queries": ["0"], "examples": ["-1"],
                                      "seed": ["-1"], "batch_size": ["0"],
                                      "split": ["holdout"]}))
    # study
    base = [f"--workdir={out_dir}"]
    config_arg = "--config=configs/study.py:tiny"
    cases["study"] = (
        _config_cases("study", config_arg, load_config("study", "tiny"), base)
        + _path_cases("study", "workdir", [config_arg] + base, workdir_faults, s)
        + _path_cases("study", "plan", [config_arg] + base, {
            "under a file": f"{file_child}.json", "a folder": f"{root}/empty_dir",
            "read-only": f"{readonly_child}.json" if readonly_child else None}, s)
        + _path_cases("study", "config.downstream.dataset.path", [config_arg] + base, {
            "missing": f"{root}/no_images", "a file": f"{root}/afile"}, s)
        + _flag_cases("study", [config_arg] + base, {"shard": ["3/2", "x"],
                                                     "cell": ["nope"]}))
    return cases


def _run_binary(binary, cases, tmp_path, sandbox):
    cases_file, results_file = tmp_path / f"{binary}.cases.json", tmp_path / f"{binary}.json"
    cases_file.write_text(json.dumps(cases))
    out = subprocess.run([sys.executable, WORKER, f"trainers/{binary}.py", str(cases_file),
                          str(results_file), sandbox["root"]], cwd=REPO, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(results_file.read_text())


BINARIES = ("convert_weights", "transfer", "imp", "tune", "prune", "evaluate", "export",
            "audit", "study")


@pytest.mark.parametrize("binary", BINARIES)
def test_every_bad_input_is_one_line_status_2_and_writes_nothing(binary, sandbox, tmp_path):
    cases = _all_cases(sandbox)[binary]
    results = _run_binary(binary, cases, tmp_path, sandbox)
    problems = []
    for case, result in zip(cases, results):
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        why = []
        if result["status"] != 2:
            why.append(f"status {result['status']}")
        if result["bug"]:
            why.append("traceback: " + result["bug"].strip().splitlines()[-1])
        if len(lines) != 1 or not lines[0].startswith(f"{binary}: error: "):
            why.append(f"stderr {lines!r}")
        elif not any(all(name in lines[0] for name in names)
                     for names in [case["names"]] + case.get("or_names", [])):
            why.append(f"message does not name {case['names']}: {lines[0]!r}")
        if "Traceback" in result["stderr"] + result["stdout"]:
            why.append("a traceback was printed")
        if result["new"] or result["gone"]:
            why.append(f"files changed: new {result['new'][:3]}, gone {result['gone'][:3]}")
        if why:
            problems.append(f"{case['id']}: {'; '.join(why)}")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


def test_the_case_count_in_the_docstring_is_current(sandbox):
    count = sum(len(c) for c in _all_cases(sandbox).values())
    assert f"this was the count when it last changed): {count}." in __doc__, count
