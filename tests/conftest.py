"""Shared fixtures: the shipped corpus, and the real WikiText-2 when it lies beside the checkout."""
from pathlib import Path

import pytest

import bertlite

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"  # ../shared/data/wikitext-2 on development machines


@pytest.fixture(scope="session")
def tiny():
    """The shipped corpus's training examples (956 pairs of at most 64 tokens)."""
    return bertlite.load_pretrain_dataset(64)


@pytest.fixture(scope="session")
def wikitext2_dir():
    if not (SHARED / "wikitext-2" / "wiki.train.tokens").exists():
        pytest.skip("the real WikiText-2 is not in ../shared/data/wikitext-2")
    return SHARED
