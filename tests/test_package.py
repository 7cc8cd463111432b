"""The package imports cleanly whatever the user imported first, and uses Keras 2 only."""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

SOURCES = [p for d in ("dwlt_tf", "trainers", "configs", "benchmarks")
           for p in glob.glob(os.path.join(REPO, d, "*.py"))]

_SNIPPET = """
{first}
import dwlt_tf
from dwlt_tf import models, pruning, pruning_wrapper
import tf_keras
model = pruning_wrapper.wrap(models.build_resnet("resnet18", 2, "cifar", base_width=4))
pruning_wrapper.set_masks(model, pruning.global_magnitude_masks(
    pruning_wrapper.get_kernels(model), None, 0.5))
assert isinstance(model, tf_keras.Model), type(model)
print("ok", round(pruning_wrapper.model_sparsity(model), 3))
"""


@pytest.mark.parametrize("first", [
    "",
    "import tensorflow as tf; tf.keras.layers.Dense  # Keras 3 resolved before dwlt_tf",
    "import keras  # Keras 3 itself",
    "import tensorflow_model_optimization as tfmot",
])
def test_fresh_interpreter_imports_whatever_came_first(first):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", _SNIPPET.format(first=first)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok 0.5")


def test_legacy_keras_switch_is_set_in_exactly_one_place():
    places = [p for p in SOURCES if "TF_USE_LEGACY_KERAS" in open(p).read()
              and re.search(r"environ\[.TF_USE_LEGACY_KERAS.\]\s*=", open(p).read())]
    assert [os.path.relpath(p, REPO) for p in places] == ["dwlt_tf/__init__.py"]


def test_no_code_uses_tf_keras_attribute():
    offenders = []
    for path in SOURCES:
        for number, line in enumerate(open(path), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\btf\.keras\.", code) and not code.strip().startswith(('"', "'")):
                offenders.append(f"{os.path.relpath(path, REPO)}:{number}")
    assert not offenders, f"use tf_keras, not tf.keras: {offenders}"
