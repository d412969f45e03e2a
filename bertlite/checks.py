"""Checks at the point where a value enters (config fields, text, JSON and torch files), and
the one-line message a user's error becomes.

A wrong value caught here gives one sentence naming the value and the fix; caught later, it is a
KeyError deep inside, or worse, a run that trains on silently wrong numbers.
"""
from __future__ import annotations

import errno
import json
import math
import numbers
import os
import pickle
import warnings
from dataclasses import fields
from pathlib import Path


class ConfigError(ValueError):
    """A config field out of its range. The message names the command-line flag too."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_types(config) -> None:
    """Every field of a dataclass has its declared type: ints are ints (not bools or floats),
    floats are finite numbers, and `X | None` may be None. Other annotations are not checked."""
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type).split(" ")[0]
        if value is None and "None" in str(f.type) or kind not in TYPES:
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's too
        ok = {"int": number and isinstance(value, numbers.Integral),
              "float": number and math.isfinite(value),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
        if not ok:
            raise ConfigError(f"{flag(f.name)} ({type(config).__name__}.{f.name}) must be "
                              f"{TYPES[kind]}, got {value!r}")


TYPES = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}


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


def require_keys(obj, keys, path, what: str):
    """`obj` if it is a dict holding every key in `keys`, else a ValueError naming the file."""
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: {what}")
    return obj


def read_json(path, keys=()) -> dict:
    """A JSON object from `path` that has every key in `keys`, or a ValueError naming the file."""
    path = Path(path)
    try:
        obj = json.loads(read_utf8(path, "JSON file"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}): restore it from "
                         "a copy or write the run again") from None
    return require_keys(obj, keys, path, "not a file bertlite wrote, or edited")


def write_atomic(path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename: `path` is whole, old or new,
    whatever happens (a full disk, a kill), and no temporary file is left behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_torch(path, map_location="cpu", keys=()) -> dict:
    """`torch.load` with weights only (no pickled code runs), and one clear error for a missing,
    empty, cut-short, foreign or hostile file (torch raises a different exception for each)."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (or not a file)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} holds Python objects, not only tensors: refused, since loading "
                         "it could run code. Use a file that bertlite wrote") from None
    except Exception as e:  # noqa: BLE001: EOFError, RuntimeError, ... for a cut or foreign file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path} is not a readable bertlite file ({first[:200]}): restore it "
                         "or train again") from None
    return require_keys(state, keys, path, "not a bertlite checkpoint")


def load_safetensors(path) -> dict:
    """The tensors of a safetensors file (which holds tensors only: nothing to run), or one clear
    error for a missing, cut-short or foreign file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: unreadable ({first[:200]}); restore it, or save or download it "
                         "again") from None


HINTS = {errno.ENOSPC: "free some space, or write elsewhere", errno.EACCES: "check its permissions",
         errno.EPERM: "check its permissions", errno.EROFS: "write elsewhere",
         errno.EISDIR: "a file was expected there", errno.ENOTDIR: "a folder was expected there",
         errno.ENOENT: "check the path"}


def one_line(e: BaseException) -> str:
    """The message of a user's error as one line that names the input (for OSErrors, the file)."""
    if isinstance(e, OSError) and e.filename is not None:  # from open(), mkdir(), ...
        text = f"{e.filename}: {e.strerror or e}"
        if e.errno in HINTS:
            text += f": {HINTS[e.errno]}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())
