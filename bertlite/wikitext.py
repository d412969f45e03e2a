"""Reading WikiText files, and getting the real WikiText-2 when asked to.

A WikiText file has one paragraph per line, ` = Title = ` headings, blank lines, and tokens that
are already split by single spaces. We turn it into paragraphs of sentences of tokens.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .checks import read_utf8
from .download import (EXTRACT_PREFIX, digest, fetch_verified, make_folder,
                       remove_stale_temporaries)

SPLITS = ("train", "valid", "test")
SHIPPED = "tinywiki"  # the small corpus written for this project, in data/tinywiki/

# The dataset author's mirror first; the original S3 address has answered 403 since 2024
# (the book's downloader does not check the status and later fails with "not a zip file").
WIKITEXT2_MIRRORS = (
    "https://wikitext.smerity.com/wikitext-2-v1.zip",
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
)
WIKITEXT2_ZIP_SHA1 = "3c914d17d80b1459be871a5039ac23e752a53cbe"
# sha256 of each extracted file: a check that does not depend on which archive they came from.
WIKITEXT2_SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}


def default_data_dir() -> Path:
    """`$BERTLITE_DATA`, else the checkout's `data/` folder, else `./data`."""
    if "BERTLITE_DATA" in os.environ:
        return Path(os.environ["BERTLITE_DATA"])
    checkout = Path(__file__).resolve().parent.parent / "data"
    return checkout if checkout.is_dir() else Path("data")


def parse_wikitext(text: str, min_sentences: int = 2) -> list[list[list[str]]]:
    """Split WikiText into paragraphs of sentences of lowercased tokens.

    Each line that is not blank and not a ` = heading = ` is a paragraph; a sentence ends at each
    `.` token and keeps it, so every sentence reads as one. Paragraphs with fewer than
    `min_sentences` sentences are dropped: one sentence gives no sentence pair. (The book splits on
    ' . ' instead, which leaves the full stop on a paragraph's last sentence only, and it counts
    sentences before stripping the line's end, so 1,072 one-sentence paragraphs of WikiText-2 slip
    through.) `bertlite.data.Corpus.from_text` is the fast path of this function, tested equal.

    Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """
    paragraphs = []
    for line in text.lower().split("\n"):
        tokens = line.split()
        if not tokens or (tokens[0] == "=" and tokens[-1] == "="):
            continue  # blank line or heading
        sentences, start = [], 0
        while start < len(tokens):
            end = tokens.index(".", start) + 1 if "." in tokens[start:] else len(tokens)
            sentences.append(tokens[start:end])
            start = end
        if len(sentences) >= min_sentences:
            paragraphs.append(sentences)
    return paragraphs


def wikitext_path(name: str = SHIPPED, split: str = "train", data_dir=None) -> Path:
    """Where `wiki.{split}.tokens` of dataset `name` lives: `data_dir/name/wiki.split.tokens`.

    Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return Path(data_dir or default_data_dir()) / name / f"wiki.{split}.tokens"


def read_text(name: str = SHIPPED, split: str = "train", data_dir=None, download=False) -> str:
    """The text of one split of a WikiText dataset, with a clear error if it is missing.

    `name` is "tinywiki" (shipped with bertlite) or "wikitext-2" (fetched with `download=True`,
    or put in place by hand). Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """
    path = wikitext_path(name, split, data_dir)
    if not path.exists() and name == "wikitext-2" and download:
        download_wikitext2(path.parent.parent)
    if not path.exists():
        hint = (f"run `python -m bertlite download` or unzip wikitext-2-v1.zip from "
                f"{WIKITEXT2_MIRRORS[0]} so that {path} exists" if name == "wikitext-2"
                else "check the data directory (argument data_dir or $BERTLITE_DATA)")
        raise FileNotFoundError(f"{path} not found: {hint}")
    if not path.is_file():
        raise IsADirectoryError(f"{path} is a folder, not a WikiText file: point --data-dir at "
                                "the folder that holds DATASET/wiki.*.tokens")
    text = read_utf8(path, "corpus")
    if not text.strip():
        raise ValueError(f"{path} is empty: restore it (or download it again)")
    return text


def read_wikitext(name: str = SHIPPED, split: str = "train", data_dir=None, download=False,
                  min_sentences: int = 2) -> list[list[list[str]]]:
    """Read one split of a WikiText dataset into paragraphs (see `parse_wikitext`).

    Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """
    paragraphs = parse_wikitext(read_text(name, split, data_dir, download), min_sentences)
    if not paragraphs:
        raise ValueError(f"{name}/{split} has no paragraph of {min_sentences}+ sentences: is it "
                         "a WikiText file (one paragraph per line, tokens split by spaces)?")
    return paragraphs


def _extract(archive: Path, target: Path, expected: dict[str, str]) -> None:
    """Extract the missing wikitext-2/wiki.*.tokens into a temporary folder beside `target`,
    verify each one, then move them into `target`. Files already in `target` are never touched,
    nor is anything else there: the folder may hold the user's own files."""
    try:
        with zipfile.ZipFile(archive) as zf, tempfile.TemporaryDirectory(
                dir=target.parent, prefix=EXTRACT_PREFIX) as tmp:
            missing = [s for s in expected if not (target / f"wiki.{s}.tokens").exists()]
            for split in missing:
                member = f"wikitext-2/wiki.{split}.tokens"
                out = Path(tmp) / f"wiki.{split}.tokens"  # a name we choose: no path from the archive
                try:
                    with zf.open(member) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except KeyError:
                    raise OSError(f"{archive} has no member {member}") from None
                if digest(out, "sha256") != expected[split]:
                    raise OSError(f"{member} in {archive} fails its sha256 check")
            target.mkdir(exist_ok=True)
            for split in missing:  # all verified: now move them in (a rename, not a copy)
                os.replace(Path(tmp) / f"wiki.{split}.tokens", target / f"wiki.{split}.tokens")
    except zipfile.BadZipFile as e:
        raise OSError(f"{archive} is not a valid zip archive ({e}): delete it and retry") from None


def download_wikitext2(data_dir=None, mirrors=WIKITEXT2_MIRRORS, sha1=WIKITEXT2_ZIP_SHA1,
                       file_sha256=None, timeout: float = 60.0) -> Path:
    """Download and verify WikiText-2 into `data_dir/wikitext-2/`; return that folder.

    Tries each mirror in turn; the archive is checked against its sha1 and every extracted file
    against its sha256. Nothing half-written is left behind on failure, and nothing that is
    already in the folder is deleted or replaced: only missing splits are added.
    Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """
    data_dir = Path(data_dir or default_data_dir())
    target = data_dir / "wikitext-2"
    if all((target / f"wiki.{s}.tokens").exists() for s in SPLITS):
        return target
    make_folder(data_dir)  # only the last level: a typo does not plant a tree of folders
    remove_stale_temporaries(data_dir)  # what a killed download or extraction left
    archive = fetch_verified(
        mirrors, data_dir / "wikitext-2-v1.zip", sha1, "sha1", timeout, what="WikiText-2",
        hint=f"Download wikitext-2-v1.zip by hand (sha1 {sha1}) and put it at "
             f"{data_dir / 'wikitext-2-v1.zip'}, or unzip it so that {target}/wiki.train.tokens exists.")
    _extract(archive, target, file_sha256 or WIKITEXT2_SHA256)
    return target
