"""Downloading data sets safely: checksums, mirrors, atomic files and folders, safe extraction.

Three promises, whatever goes wrong (a dead mirror, an error page instead of the archive, a
crash half-way, a hostile archive):
- a downloaded file appears under its final name only once its checksum is verified;
- an extracted folder appears under its final name only once it is complete;
- nothing is written outside the folder we extract into.
`bertlite.wikitext` (WikiText-2) and `bertlite.imdb` (IMDB reviews) share this code.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

ALGORITHMS = ("sha1", "sha256", "md5")


def digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (archives can be larger than memory).

    Explained in notebooks/08_fill_mask.ipynb.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest, checksum: str, algorithm: str = "sha256", timeout: float = 60.0,
          deadline: float = 3600.0) -> None:
    """Download `url` to `dest` through a temporary file beside it; rename only if the checksum
    matches, so `dest` exists whole and verified or not at all. Raises OSError on any failure.
    `timeout` bounds each wait for data, `deadline` the whole download: a server that trickles
    a byte now and then would otherwise never time out.

    Explained in notebooks/08_fill_mask.ipynb.
    """
    dest = Path(dest)
    if urllib.parse.urlsplit(url).scheme not in ("https", "http", "file"):
        raise OSError(f"{url!r} is not an https://, http:// or file:// address")
    remove_stale_temporaries(dest.parent)
    end = time.monotonic() + deadline
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=DOWNLOAD_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            status = getattr(r, "status", None)
            if status not in (None, 200):  # file:// answers have no status
                raise OSError(f"HTTP {status}")
            read = getattr(r, "read1", r.read)  # read1: what has arrived, without waiting for more
            while chunk := read(1 << 20):
                out.write(chunk)
                if time.monotonic() > end:
                    raise OSError(f"not finished after {deadline:g} s: try again later")
        got = digest(tmp, algorithm)
        if got != checksum.lower():
            raise OSError(f"{algorithm} mismatch: expected {checksum}, got {got}")
        os.replace(tmp, dest)  # atomic: the file exists whole or not at all
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def make_folder(folder) -> Path:
    """Create the data folder `folder` if it is missing, but only that one level: a typo in
    `--data-dir` (`/home/me/dta/wiki`) must not plant a tree of folders on the way. Raises one
    clear error for a path that is a file, or whose parent folder does not exist."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file: give --data-dir a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise FileNotFoundError(f"data folder {folder}: its parent {folder.parent} does not exist "
                                "(a typo in --data-dir?): create it first, or give one that exists")
    folder.mkdir(exist_ok=True)
    return folder


def fetch_verified(mirrors, dest, checksum: str, algorithm: str = "sha256", timeout: float = 60.0,
                   what: str = "the archive", hint: str = "", deadline: float = 3600.0) -> Path:
    """`dest` if it is already there and verified, else the first mirror that gives a file with
    the right checksum. Raises RuntimeError listing every mirror's error, then `hint` (say there
    how to get the file by hand). Explained in notebooks/08_fill_mask.ipynb.
    """
    dest = Path(dest)
    if dest.exists():
        if digest(dest, algorithm) != checksum.lower():
            raise RuntimeError(f"{dest} exists but its {algorithm} is not {checksum}: "
                               "delete it and retry")
        return dest
    make_folder(dest.parent)
    errors = []
    for url in mirrors:
        try:
            fetch(url, dest, checksum, algorithm, timeout, deadline)
            return dest
        except OSError as e:  # URLError and HTTPError are OSErrors too
            errors.append(f"  {url}: {e}")
    raise RuntimeError(f"could not download {what}:\n" + "\n".join(errors)
                       + ("\n" + hint if hint else ""))


# Temporary names no one else would choose, and the exact shape tempfile gives them (8 random
# characters): the data folder may be the user's own, so only these are ever cleaned up.
DOWNLOAD_PREFIX, EXTRACT_PREFIX = ".bertlite-download-", ".bertlite-extract-"
_OURS = re.compile(rf"({re.escape(DOWNLOAD_PREFIX)}|{re.escape(EXTRACT_PREFIX)})[a-z0-9_]{{8}}")


def remove_stale_temporaries(folder, age: float = 3600.0) -> None:
    """Delete our own leftovers in `folder` (the download files and extraction folders of a
    process that was killed) once untouched for `age` seconds: a younger one may be in use."""
    for p in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if _OURS.fullmatch(p.name) and time.time() - p.stat().st_mtime > age:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextmanager
def building(target):
    """A temporary folder beside `target` that becomes `target` only if the `with` block
    succeeds: a crash or an error leaves neither a half-filled `target` nor the temporary folder.

    Explained in notebooks/08_fill_mask.ipynb.
    """
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists: delete it first")
    make_folder(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=EXTRACT_PREFIX))
    try:
        yield tmp
        os.replace(tmp, target)  # the folder appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_safe_name(name: str) -> bool:
    """True for a relative path that stays inside the folder it is extracted into: not absolute,
    no `..`, no drive letter or backslash (which Windows reads as a separator).
    Explained in notebooks/08_fill_mask.ipynb.
    """
    parts = PurePosixPath(name).parts
    return bool(parts) and not (name.startswith("/") or "\\" in name or ":" in parts[0]
                                or ".." in parts)


def is_safe_member(member: tarfile.TarInfo) -> bool:
    """True for a regular file with a safe name (see `is_safe_name`). Links and devices are never
    safe: a link extracted first lets a later file be written through it to anywhere.
    Explained in notebooks/08_fill_mask.ipynb.
    """
    return member.isfile() and is_safe_name(member.name)  # folders are made as needed


def extract_tar(archive, target, select) -> int:
    """Extract some files of a tar archive (gzip or not) into a new folder `target`, atomically
    (see `building`). `select(name)` gives the path inside `target` for a member, or None to
    skip it. Unsafe members (see `is_safe_member`) are skipped whatever `select` says, and where
    Python has it, tarfile's own "data" filter checks again. Returns the number of files
    extracted; raises OSError for a corrupt archive.

    Explained in notebooks/08_fill_mask.ipynb.
    """
    try:
        with tarfile.open(archive) as tf, building(target) as tmp:
            members = []
            for m in tf:
                new = select(m.name) if is_safe_member(m) else None
                if new is not None and is_safe_name(new):
                    m.name, m.mode = new, 0o644  # plain readable files, whatever the archive says
                    members.append(m)
            if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.8-3.11 security releases
                tf.extractall(tmp, members=members, filter="data")
            else:
                tf.extractall(tmp, members=members)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:  # EOFError: cut short
        raise OSError(f"{archive} is not a valid tar archive ({e}): delete it and retry") from None
    return len(members)
