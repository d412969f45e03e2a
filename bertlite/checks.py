"""Checks at the point where a value enters: config fields, text files, JSON files.

A wrong value caught here gives one sentence naming the value and the fix; caught later, it is a
KeyError deep inside, or worse, a run that trains on silently wrong numbers.
"""
from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path


class ConfigError(ValueError):
    """A config field out of its range. The message names the command-line flag too."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_types(config) -> None:
    """Every field of a dataclass has its declared type: ints are ints (not bools or floats),
    floats are finite numbers, and `X | None` may be None."""
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and "None" in kind:
            continue
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind.split(" ")[0]]
        if not ok:
            raise ConfigError(f"{flag(f.name)} ({type(config).__name__}.{f.name}) must be "
                              f"{'a finite float' if kind.startswith('float') else 'a ' + kind}, "
                              f"got {value!r}")


def check_range(config, name: str, low=None, high=None, *, low_open=False, high_open=False,
                why: str = "") -> None:
    """`low <= value <= high` (`<` on an open side); None leaves a side unbounded."""
    value = getattr(config, name)
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        allowed = " and ".join(
            [f"{'>' if low_open else '>='} {low}"] * (low is not None)
            + [f"{'<' if high_open else '<='} {high}"] * (high is not None))
        raise ConfigError(f"{flag(name)} ({type(config).__name__}.{name}) must be {allowed}"
                          f"{' (' + why + ')' if why else ''}, got {value!r}")


def check_choice(config, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{flag(name)} ({type(config).__name__}.{name}) must be one of "
                          f"{', '.join(map(str, choices))}; got {value!r}")


def read_utf8(path, what: str = "file") -> str:
    """The text of `path`, or a ValueError that names the file and the byte that is not UTF-8."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}): "
                         f"save the {what} as UTF-8") from None


def read_json(path, keys=()) -> dict:
    """A JSON object from `path` that has every key in `keys`, or a ValueError naming the file."""
    path = Path(path)
    try:
        obj = json.loads(read_utf8(path, "JSON file"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}): restore it from "
                         "a copy or write the run again") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a file bertlite wrote, or edited")
    return obj
