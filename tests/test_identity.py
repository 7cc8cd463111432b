"""Tests for dwlt_tf.identity: what is part of a run's identity, and workdir claims."""
import dataclasses
import json
import os

import pytest

from dwlt_tf import attacks, data, identity, imp, train


@dataclasses.dataclass(frozen=True)
class _SpecV1:
    lr: float = 0.1
    epochs: int = 1
    verbose: int = identity.neutral(1)


@dataclasses.dataclass(frozen=True)
class _SpecV2(_SpecV1):
    # A field added in a later version, at a default that reproduces V1's behaviour.
    label_smoothing: float = 0.0


def test_identity_omits_neutral_fields_and_defaults():
    assert identity.describe(_SpecV1()) == {}
    assert identity.describe(_SpecV1(lr=0.5, verbose=0)) == {"lr": 0.5}
    # Adding a defaulted field changes no existing key; setting it does.
    assert identity.key(_SpecV2(lr=0.5)) == identity.key(_SpecV1(lr=0.5))
    assert identity.key(_SpecV2(lr=0.5, label_smoothing=0.1)) != identity.key(_SpecV1(lr=0.5))
    # 1 and 1.0 are the same setting; tuples and lists the same sequence.
    assert identity.key({"a": 1.0, "b": (1, 2)}) == identity.key({"a": 1, "b": [1, 2]})


def test_train_data_and_imp_specs_leave_out_exactly_the_result_neutral_fields():
    base = train.TrainSpec(mode="pgd", lr=0.05)
    neutral = dataclasses.replace(base, verbose=0, eval_batch_size=17, log_every_steps=3,
                                  checkpoint_every_steps=9)
    assert identity.describe(neutral) == identity.describe(base)
    described = identity.describe(base)
    assert described["lr"] == 0.05 and described["mode"] == "pgd"
    # The mode's default attack is spelled out: it changes results.
    assert described["attack"] == identity.describe(attacks.PRESETS["pgd10_train"])
    for changed in (dict(seed=2), dict(precision="mixed_bfloat16"), dict(test=False),
                    dict(eval_attack=None), dict(select_ra=False)):
        assert identity.key(dataclasses.replace(base, **changed)) != identity.key(base), changed
    spec = data.DataSpec("cifar10", data_dir="/a", image_size=32)
    moved = data.DataSpec("cifar10", data_dir="/b", image_size=32, download=True)
    assert identity.describe(spec) == identity.describe(moved) == {"name": "cifar10",
                                                                  "image_size": 32}
    # More IMP rounds continue a run; another pruning fraction is another run.
    assert identity.key(imp.ImpSpec(rounds=3)) == identity.key(imp.ImpSpec(rounds=20))
    assert identity.key(imp.ImpSpec(fraction=0.4)) != identity.key(imp.ImpSpec())


def test_paths_expand_home_and_environment(monkeypatch):
    monkeypatch.setenv("DWLT_TEST_DATA", "/data/sets")
    spec = data.DataSpec("imagefolder", path="$DWLT_TEST_DATA/imagenet")
    assert spec.path == "/data/sets/imagenet"
    assert data.DataSpec("cifar10", data_dir="~/tensorflow_datasets").data_dir == \
        os.path.expanduser("~/tensorflow_datasets")


def test_claim_records_resumes_refuses_and_moves_aside(tmp_path):
    workdir = str(tmp_path / "run")
    first = {"train": {"lr": 0.1, "epochs": 3}, "ticket": "abc"}
    assert identity.claim(workdir, first) is None
    record = json.load(open(os.path.join(workdir, identity.IDENTITY_FILE)))
    assert record["identity"] == first and record["key"] == identity.key(first)
    open(os.path.join(workdir, "result.json"), "w").write("{}")
    assert identity.claim(workdir, dict(first)) is None  # same run: go on
    other = {"train": {"lr": 0.5}, "ticket": None}
    with pytest.raises(identity.RunIdentityError) as error:
        identity.claim(workdir, other)
    message = str(error.value)
    assert "train.lr: 0.1 -> 0.5" in message and "train.epochs: 3 -> (default)" in message
    assert 'ticket: "abc" -> null' in message and "--overwrite" in message
    assert os.path.exists(os.path.join(workdir, "result.json"))  # nothing touched
    moved = identity.claim(workdir, other, overwrite=True)
    assert moved.startswith(workdir + ".replaced-")
    assert os.path.exists(os.path.join(moved, "result.json"))  # kept, never deleted
    assert identity.read(workdir) == other and os.listdir(workdir) == [identity.IDENTITY_FILE]


def test_claim_refuses_run_outputs_without_a_record(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(identity.RunIdentityError, match=r"holds run outputs \(checkpoints\) "
                                                        "but no run record"):
        identity.claim(str(tmp_path), {"a": 1})
    # Other files (a scheduler's log, scratch of atomic writes) do not make a run.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "slurm-123.out").write_text("")
    (fresh / ".tmp-abc").write_text("")
    assert identity.claim(str(fresh), {"a": 1}) is None


@dataclasses.dataclass(frozen=True)
class _SpecV3(_SpecV1):
    # V1's fields, but a later version changed `lr`'s default: same key, other results.
    lr: float = 0.5


def test_a_changed_default_is_refused_naming_the_field(tmp_path):
    workdir = str(tmp_path / "run")
    old = _SpecV1()
    identity.claim(workdir, identity.describe(old), resolved=identity.describe(old, full=True))
    record = json.load(open(os.path.join(workdir, identity.IDENTITY_FILE)))
    assert record["resolved"] == {"lr": 0.1, "epochs": 1} and record["identity"] == {}
    new = _SpecV3()
    assert identity.key(new) == identity.key(old)  # keys are stable across versions...
    with pytest.raises(identity.RunIdentityError, match=r"made with other values of settings "
                       r"now at their defaults \(a default changed since\):\n  lr: 0.1 -> 0.5"):
        identity.claim(workdir, identity.describe(new), resolved=identity.describe(new, True))
    # A run recorded before resolved identities existed is accepted as it is.
    del record["resolved"]
    json.dump(record, open(os.path.join(workdir, identity.IDENTITY_FILE), "w"))
    identity.claim(workdir, identity.describe(new), resolved=identity.describe(new, True))


def test_process_settings_enter_the_identity_away_from_their_defaults():
    from conftest import mirrored_strategy  # pylint: disable=import-outside-toplevel
    from dwlt_tf import runtime  # pylint: disable=import-outside-toplevel
    spec, data_identity = train.TrainSpec(lr=0.05), {"content": "x"}
    plain = train.run_identity(spec, data_identity)
    assert "runtime" not in plain  # defaults: the keys of existing runs do not change
    two = train.run_identity(spec, data_identity, strategy=mirrored_strategy())
    assert two["runtime"] == {"replicas": 2} and identity.key(two) != identity.key(plain)
    full = train.run_identity(spec, data_identity, full=True)
    assert full["runtime"] == {"replicas": 1, "jit_compile": False, "deterministic": False,
                               "onednn": True}
    assert full["train"]["gamma"] == 0.1 and "verbose" not in full["train"]  # neutral stays out
    runtime.configure(jit_compile=True)
    try:
        assert train.run_identity(spec, data_identity)["runtime"] == {"jit_compile": True}
    finally:
        runtime.configure(jit_compile=False)


def test_package_versions_are_recorded_and_a_difference_is_a_warning(tmp_path):
    workdir = str(tmp_path / "run")
    identity.claim(workdir, {"lr": 0.1})
    path = os.path.join(workdir, identity.IDENTITY_FILE)
    record = json.load(open(path))
    assert record["versions"]["tensorflow"] == identity.versions()["tensorflow"]
    assert set(record["versions"]) == set(identity.PACKAGES)
    record["versions"]["tensorflow"] = "2.0.0"
    json.dump(record, open(path, "w"))
    with pytest.warns(identity.VersionWarning, match=r"tensorflow 2.0.0 -> 2\.21"):
        identity.claim(workdir, {"lr": 0.1})
