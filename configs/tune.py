r"""Tuning transfer hyperparameters with keras-tuner (random, bayesian or hyperband).

The base run is a configs/transfer.py variant (`:<variant>` picks it; default `local`,
the CPU-scale transfer on the bundled CIFAR-10 JPEGs). `tune.space` declares the search
space over `train.*` fields; the objective is validation SA, validation RA or their
weighted sum -- the test split is never used. The best hyperparameters are written as
a flagfile that trainers/transfer.py takes:

  python trainers/tune.py --config=configs/tune.py:local --pretrained=weights/X \
      --workdir=runs/tune
  python trainers/transfer.py --config=configs/transfer.py:local --pretrained=weights/X \
      --workdir=runs/best --flagfile=runs/tune/best.flags
"""
import importlib.util
import os

import ml_collections


def _transfer_config(variant):
    spec = importlib.util.spec_from_file_location(
        "_dwlt_config_transfer", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "transfer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def get_config(variant="local"):
    config = _transfer_config(variant)
    del config["seeds"]  # a search tunes one seed's transfer (train.seed)
    config.train.verbose = 0
    config.tune = ml_collections.ConfigDict(dict(
        oracle="random", objective="val_sa", weights={"sa": 1.0, "ra": 0.0}, max_trials=8,
        max_epochs=4, seed=1,
        space={
            "lr": {"type": "float", "min": 1e-3, "max": 0.1, "sampling": "log"},
            "weight_decay": {"type": "choice", "values": [5e-4, 1e-4]},
            "epochs": {"type": "int", "min": 2, "max": 4},
        }))
    return config
