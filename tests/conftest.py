"""Shared fixtures: the shipped corpus, and the real WikiText-2 when it lies beside the checkout."""
import contextlib
import http.server
import threading
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


@pytest.fixture
def serve():
    """`with serve(folder) as base:` serves `folder` over HTTP on 127.0.0.1 at the URL `base`."""
    @contextlib.contextmanager
    def serving(folder):
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
    return serving
