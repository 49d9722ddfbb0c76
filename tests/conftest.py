import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the default profile store is a user directory ($XDG_CACHE_HOME/saturn/profiles): one per test
# session, so tests neither read nor fill the developer's own store
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="saturn-test-cache-"))
# the staging ledger (saturn.runtime.staging) is one file per node and user, shared by every Saturn
# process there: one per test session, so a test's saves never wait on, or read entries written
# by, another session's (or another checkout's) processes
os.environ.setdefault("SATURN_STAGING_LEDGER", os.path.join(tempfile.mkdtemp(prefix="saturn-test-staging-"),
                                                            "ledger.json"))
# input pipelines share a node's cores through a ledger file (saturn.data.ledger): one per test
# session, so tests never trade cores with another session's (or a real job's) pipelines
os.environ.setdefault("SATURN_DATA_LEDGER", os.path.join(tempfile.mkdtemp(prefix="saturn-test-ledger-"), "cores.json"))


@pytest.fixture
def write_yaml(tmp_path):
    """Write YAML text to a file and return its path."""

    def _write(text: str, name: str = "w.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
