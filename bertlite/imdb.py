"""The IMDB movie reviews (Maas et al. 2011, "Learning Word Vectors for Sentiment Analysis"):
25,000 training and 25,000 test reviews, half positive (rated 7-10), half negative (1-4).

Real data for fine-tuning, fetched only on request (`download=True`) into the data directory.
The archive (84 MB) is checked against its md5 before anything is extracted, and only the
labelled reviews are extracted: `aclImdb/{train,test}/{pos,neg}/*.txt`, not the 50,000 unlabelled
ones nor the bag-of-words files.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from .download import extract_tar, fetch_verified
from .wikitext import default_data_dir

IMDB_MIRRORS = (
    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
)
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"  # the value torchtext and TensorFlow Datasets check
ARCHIVE = "aclImdb_v1.tar.gz"
FOLDER = "aclImdb"
SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}
# The only members we extract; `[^/]+` keeps a review file from naming a subfolder.
REVIEW = re.compile(r"aclImdb/(train|test)/(pos|neg)/[^/]+\.txt")


def _installed(folder: Path) -> bool:
    return all((folder / s / lab).is_dir() for s in SPLITS for lab in LABELS)


def _hint(data_dir: Path) -> str:
    return (f"Download {ARCHIVE} by hand from {IMDB_MIRRORS[0]} (md5 {IMDB_MD5}) and put it at "
            f"{data_dir / ARCHIVE}; it is then verified and extracted on the next call.")


def download_imdb(data_dir=None, mirrors=None, md5: str | None = None,
                  timeout: float = 120.0) -> Path:
    """Get the IMDB reviews into `data_dir/aclImdb/` and return that folder.

    Uses `data_dir/aclImdb_v1.tar.gz` if it is there (after checking its md5), else downloads it
    from the first of `mirrors` (default `IMDB_MIRRORS`) that answers with the right md5 (default
    `IMDB_MD5`); then extracts the labelled reviews through a temporary folder, so `aclImdb/`
    appears complete or not at all.
    Explained in notebooks/08_fill_mask.ipynb.
    """
    data_dir = Path(data_dir or default_data_dir())
    target = data_dir / FOLDER
    if _installed(target):
        return target
    if target.exists():  # incomplete, and not ours to delete: it may hold someone's own files
        raise FileExistsError(f"{target} exists but lacks some of {{train,test}}/{{pos,neg}}/: "
                              "move it away or delete it, then retry (bertlite extracts a new one)")
    archive = fetch_verified(mirrors or IMDB_MIRRORS, data_dir / ARCHIVE, md5 or IMDB_MD5, "md5",
                             timeout, what="the IMDB reviews", hint=_hint(data_dir))
    n = extract_tar(archive, target, _select)
    if not _installed(target):
        shutil.rmtree(target)  # the folder extract_tar has just made
        raise RuntimeError(f"{archive} extracted {n} reviews but not all of "
                           "aclImdb/{train,test}/{pos,neg}/: is it the IMDB archive?")
    return target


def load_imdb(split: str = "train", data_dir=None, download: bool = False,
              limit: int | None = None) -> tuple[list[str], list[int]]:
    """(texts, labels) of one split of the IMDB reviews; label 1 means positive, 0 negative.

    The negative reviews come first, then the positive ones, each in the order of their file
    numbers, so the result never depends on the file system. `limit` keeps the first `limit // 2`
    negative and `limit - limit // 2` positive reviews: a small sample that stays balanced. The
    texts are as the authors wrote them, HTML line breaks (`<br />`) included.
    Without the data and with `download=False`, the error says where to put the archive.
    Explained in notebooks/08_fill_mask.ipynb.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if limit is not None and limit < 2:
        raise ValueError(f"limit={limit}: ask for at least 2 reviews (one of each label)")
    data_dir = Path(data_dir or default_data_dir())
    folder = data_dir / FOLDER
    if not _installed(folder):
        if not (download or (data_dir / ARCHIVE).exists()):  # a local archive needs no network
            raise FileNotFoundError(f"the IMDB reviews are not in {folder}: call "
                                    f"load_imdb(download=True) to get them, or:\n{_hint(data_dir)}")
        download_imdb(data_dir)
    texts, labels = [], []
    for name, label in LABELS.items():
        files = sorted((folder / split / name).glob("*.txt"), key=_file_number)
        if limit is not None:
            files = files[:limit // 2 if label == 0 else limit - limit // 2]
        texts += [f.read_text(encoding="utf-8") for f in files]
        labels += [label] * len(files)
    return texts, labels


def _select(name: str):
    """Where a member goes inside `aclImdb/`: "aclImdb/train/pos/0_9.txt" -> "train/pos/0_9.txt";
    None for everything that is not a labelled review."""
    name = name[2:] if name.startswith("./") else name  # some tar tools write "./aclImdb/..."
    return name.split("/", 1)[1] if REVIEW.fullmatch(name) else None


def _file_number(path: Path):
    """Files are named `{review number}_{rating}.txt`: sort 2_3.txt before 10_1.txt."""
    head = path.stem.split("_")[0]
    return (int(head), path.name) if head.isdigit() else (float("inf"), path.name)
