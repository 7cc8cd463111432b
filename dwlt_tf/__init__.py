"""dwlt_tf: find, transfer, verify and serve Double-Win Lottery Tickets in TensorFlow.

Importing the package selects Keras 2 (`tf_keras`), which TF-MOT requires. This is the
only place the project sets `TF_USE_LEGACY_KERAS`; every module imports `tf_keras`
directly and never `tf.keras`, so the choice holds even when the user imported
TensorFlow (or Keras 3) before dwlt_tf.
"""
import os as _os

# TF resolves its lazy `tf.keras` alias on first access; setting this before our first
# TensorFlow import makes `tf.keras` mean Keras 2 for libraries (TF-MOT, CleverHans)
# that still reach for it.
_os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"


def _check_keras():
    """Fails with a clear message when tf_keras cannot serve this TensorFlow."""
    try:
        import tensorflow as tf
        import tf_keras
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "dwlt_tf needs tensorflow and tf-keras (Keras 2) installed together; "
            f"import failed with: {e}. Install with: pip install -r requirements.txt"
        ) from e
    tf_mm = ".".join(tf.__version__.split(".")[:2])
    keras_mm = ".".join(tf_keras.__version__.split(".")[:2])
    if tf_mm != keras_mm:
        raise ImportError(
            f"tf-keras {tf_keras.__version__} does not match tensorflow {tf.__version__}: "
            f"install tf-keras=={tf_mm}.* (requirements.txt pins a matching pair)."
        )


_check_keras()
