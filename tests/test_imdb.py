"""The shared download helpers and the IMDB reviews, on small archives built here (no network)."""
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from bertlite import imdb
from bertlite.download import digest, is_safe_name
from bertlite.imdb import ARCHIVE, download_imdb, load_imdb

# Named as in the real archive: {review number}_{rating}.txt. Numbers 2 and 10 check the sort.
REVIEWS = {
    "aclImdb/train/pos/10_9.txt": "A wonderful film.<br /><br />See it.",
    "aclImdb/train/pos/2_8.txt": "Great acting and a clever plot.",
    "aclImdb/train/neg/0_1.txt": "Dull from start to end.",
    "aclImdb/train/neg/1_2.txt": "The worst film of the year, caf\u00e9 scenes included.",
    "aclImdb/test/pos/0_10.txt": "Loved every minute.",
    "aclImdb/test/neg/0_3.txt": "I left half-way.",
}
OTHERS = {  # in the real archive too, and not wanted
    "aclImdb/train/unsup/0_0.txt": "unlabelled",
    "aclImdb/imdb.vocab": "the\nand\n",
    "aclImdb/train/urls_pos.txt": "http://www.imdb.com/title/tt0453418/usercomments\n",
}


def add_file(tf: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data))


def add_link(tf: tarfile.TarFile, name: str, target: str, kind=tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tf.addfile(info)


def make_archive(path: Path, extra=None) -> str:
    """Write a small aclImdb_v1.tar.gz at `path`; `extra(tf)` adds more members. Returns its md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, text in {**REVIEWS, **OTHERS}.items():
            add_file(tf, name, text.encode())
        if extra:
            extra(tf)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "served" / ARCHIVE
    return path, make_archive(path)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_digest_algorithms(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"bertlite" * 1000)
    for algorithm in ("md5", "sha1", "sha256"):
        assert digest(f, algorithm) == hashlib.new(algorithm, f.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="choose one of"):
        digest(f, "crc32")


@pytest.mark.parametrize("name, safe", [
    ("aclImdb/train/pos/0_9.txt", True), ("../evil.txt", False), ("a/../../evil.txt", False),
    ("/etc/passwd", False), ("C:/evil.txt", False), ("a\\..\\evil.txt", False), ("", False)])
def test_safe_names(name, safe):
    assert is_safe_name(name) == safe


def test_download_from_file_url_and_load(tmp_path, archive):
    path, md5 = archive
    folder = download_imdb(tmp_path / "data", mirrors=[path.as_uri()], md5=md5)
    assert folder == tmp_path / "data" / "aclImdb"
    extracted = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert extracted == sorted(name.split("/", 1)[1] for name in REVIEWS)  # reviews only
    assert leftovers(tmp_path / "data") == ["aclImdb", ARCHIVE]  # no temporary files
    texts, labels = load_imdb("train", tmp_path / "data")
    assert labels == [0, 0, 1, 1]  # negatives first, each by review number: 2 before 10
    assert texts == [REVIEWS["aclImdb/train/neg/0_1.txt"], REVIEWS["aclImdb/train/neg/1_2.txt"],
                     REVIEWS["aclImdb/train/pos/2_8.txt"], REVIEWS["aclImdb/train/pos/10_9.txt"]]
    assert load_imdb("test", tmp_path / "data") == (["I left half-way.", "Loved every minute."], [0, 1])
    assert load_imdb("train", tmp_path / "data", limit=3)[1] == [0, 1, 1]  # balanced sample
    with pytest.raises(ValueError, match="unknown split"):
        load_imdb("valid", tmp_path / "data")


def test_download_over_http_from_localhost(tmp_path, archive, serve):
    path, md5 = archive
    with serve(path.parent) as base:
        # The first mirror answers 404: the next one is tried.
        folder = download_imdb(tmp_path / "data", mirrors=[f"{base}/missing.tar.gz", f"{base}/{ARCHIVE}"],
                               md5=md5)
    assert (folder / "test" / "pos" / "0_10.txt").read_text() == "Loved every minute."


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, archive):
    path, _ = archive
    with pytest.raises(RuntimeError, match="md5 mismatch"):
        download_imdb(tmp_path / "data", mirrors=[path.as_uri()], md5="0" * 32)
    assert leftovers(tmp_path / "data") == []


def test_a_partial_folder_of_the_users_is_kept(tmp_path, archive):
    """An incomplete aclImdb/ that bertlite did not make (a manual attempt, the user's notes in
    it) is never deleted: the error says to move it away."""
    path, md5 = archive
    notes = tmp_path / "data" / "aclImdb" / "my_notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    with pytest.raises(FileExistsError, match="move it away"):
        download_imdb(tmp_path / "data", mirrors=[path.as_uri()], md5=md5)
    assert notes.read_text() == "mine" and leftovers(tmp_path / "data") == ["aclImdb"]


def test_a_mistyped_data_folder_plants_no_tree(tmp_path, archive):
    path, md5 = archive
    with pytest.raises(FileNotFoundError, match="a typo in --data-dir"):
        download_imdb(tmp_path / "dta" / "imdb", mirrors=[path.as_uri()], md5=md5)
    assert not (tmp_path / "dta").exists()
    assert download_imdb(tmp_path / "data", mirrors=[path.as_uri()], md5=md5).is_dir()  # one level is made


@pytest.mark.parametrize("data", [b"<html>503 Service Unavailable</html>", "truncated"])
def test_corrupt_archive_is_reported_and_nothing_extracted(tmp_path, archive, data):
    if data == "truncated":  # a download cut short whose md5 someone computed anyway
        data = archive[0].read_bytes()[:300]
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data)
    with pytest.raises(OSError, match="not a valid tar archive"):
        download_imdb(tmp_path / "data", mirrors=[bad.as_uri()], md5=hashlib.md5(data).hexdigest())
    assert leftovers(tmp_path / "data") == [ARCHIVE]  # the verified download itself, no folder


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-data-filter", "own-check-only"])
def test_malicious_members_are_not_extracted(tmp_path, monkeypatch, data_filter):
    if not data_filter:  # an older Python: our own check must be enough
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    outside = tmp_path / "outside"
    outside.mkdir()

    def evil(tf):
        add_file(tf, "../evil.txt", b"evil")
        add_file(tf, "aclImdb/train/pos/../../../../evil2.txt", b"evil")
        add_file(tf, str(outside / "absolute.txt"), b"evil")  # an absolute path
        add_link(tf, "aclImdb/train/pos/5_10.txt", "/etc/passwd")  # a symlink named like a review
        add_link(tf, "aclImdb/train/neg/7_1.txt", "../../../../outside/x", tarfile.LNKTYPE)
        add_file(tf, "aclImdb/train/neg/8_1.txt", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add_link(tf, "aclImdb/test/pos", str(outside))  # a folder link, then a file through it
        add_file(tf, "aclImdb/test/pos/9_9.txt", b"evil")

    src = tmp_path / "served" / ARCHIVE
    md5 = make_archive(src, evil)
    data = tmp_path / "deep" / "data"  # deep: what climbs out of it by ../ stays in tmp_path
    data.parent.mkdir()
    folder = download_imdb(data, mirrors=[src.as_uri()], md5=md5)
    assert not list(tmp_path.rglob("evil*.txt")) and leftovers(outside) == []
    assert not [p for p in folder.rglob("*") if p.is_symlink() or (p.exists() and not (p.is_file() or p.is_dir()))]
    assert not (folder / "train" / "pos" / "5_10.txt").exists()
    assert len(load_imdb("train", data)[0]) == 4
    assert len(load_imdb("test", data)[0]) == 3  # 9_9.txt went into a real folder, not the link


def test_offline_errors_say_where_to_put_the_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as e:
        load_imdb(data_dir=tmp_path)
    assert f"put it at {tmp_path / ARCHIVE}" in str(e.value) and imdb.IMDB_MD5 in str(e.value)
    with pytest.raises(RuntimeError, match="by hand"):
        download_imdb(tmp_path, mirrors=["http://127.0.0.1:9/none.tar.gz"], timeout=2)
    assert leftovers(tmp_path) == []


def test_an_archive_put_in_place_by_hand_is_verified_then_used(tmp_path, monkeypatch):
    md5 = make_archive(tmp_path / ARCHIVE)
    with pytest.raises(RuntimeError, match="exists but its md5"):  # not the real archive's md5
        load_imdb(data_dir=tmp_path)
    assert leftovers(tmp_path) == [ARCHIVE]
    monkeypatch.setattr(imdb, "IMDB_MD5", md5)
    monkeypatch.setattr(imdb, "IMDB_MIRRORS", ("http://127.0.0.1:9/never-asked.tar.gz",))
    assert load_imdb(data_dir=tmp_path)[1] == [0, 0, 1, 1]


def test_an_archive_without_the_reviews_is_refused(tmp_path):
    src = tmp_path / "other.tar.gz"
    with tarfile.open(src, "w:gz") as tf:
        add_file(tf, "something/else.txt", b"hello")
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    with pytest.raises(RuntimeError, match="is it the IMDB archive"):
        download_imdb(tmp_path / "data", mirrors=[src.as_uri()], md5=md5)
    assert leftovers(tmp_path / "data") == [ARCHIVE]
