"""Validation of settings at the boundary, with messages that name the key and the value.

Every spec (`train.TrainSpec`, `data.DataSpec`, `attacks.Attack`, ...) checks its fields
with these in `__post_init__`; each raises `errors.ConfigError` ("train.epochs=0: must be
a positive int"), which the trainers print as one line. Values from command-line
overrides arrive with whatever type the flag parser gave them (a tuple flag turns `abc`
into ('abc',)), so every check also checks the type.
"""
import math

from dwlt_tf.errors import ConfigError


def fail(name, value, why):
    raise ConfigError(f"{name}={value!r}: {why}")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def integer(name, value, low=None, high=None):
    """An int in [low, high] (either bound may be None)."""
    if not is_int(value) or (low is not None and value < low) or (
            high is not None and value > high):
        if low == 1 and high is None:
            fail(name, value, "must be a positive int")
        if high is None:
            fail(name, value, "must be an int" + ("" if low is None else f" >= {low}"))
        if low is None:
            fail(name, value, f"must be an int <= {high}")
        fail(name, value, f"must be an int in [{low}, {high}]")
    return value


def positive_int(name, value):
    return integer(name, value, 1)


def non_negative_int(name, value):
    return integer(name, value, 0)


def seed(name, value):
    """A seed: what numpy, TensorFlow and Keras accept (0 <= seed < 2**32)."""
    return integer(name, value, 0, 2 ** 32 - 1)


def number(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite int or float in the interval given by the bounds (closed unless `*_open`)."""
    bad = not is_number(value)
    if not bad and low is not None:
        bad = value <= low if low_open else value < low
    if not bad and high is not None:
        bad = value >= high if high_open else value > high
    if bad:
        left = "-inf" if low is None else low
        right = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}" \
                   f"{')' if high_open or high is None else ']'}"
        fail(name, value, f"must be a number in {interval}")
    return value


def boolean(name, value):
    if not isinstance(value, bool):
        fail(name, value, "must be True or False")
    return value


def choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        fail(name, value, f"choose one of {tuple(choices)}")
    return value


def int_tuple(name, value, low=None, distinct=False, increasing=False):
    """A tuple (or list) of ints >= low; returns it as a tuple."""
    if not isinstance(value, (tuple, list)) or not all(is_int(v) for v in value):
        fail(name, value, "must be a sequence of ints")
    if low is not None and any(v < low for v in value):
        fail(name, value, f"every entry must be >= {low}")
    if distinct and len(set(value)) != len(value):
        fail(name, value, "entries must be distinct")
    if increasing and list(value) != sorted(value):
        fail(name, value, "must be increasing")
    return tuple(value)


def str_tuple(name, value, choices=None, nonempty=False):
    """A tuple (or list) of strings (each in `choices` when given); returns a tuple."""
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        fail(name, value, "must be a sequence of strings")
    if choices is not None and any(v not in choices for v in value):
        fail(name, value, f"choose among {tuple(choices)}")
    if nonempty and not value:
        fail(name, value, "must not be empty")
    return tuple(value)


def optional_str(name, value):
    """None or a string ("" counts as None)."""
    if value is not None and not isinstance(value, str):
        fail(name, value, "must be a string")
    return value or None
