import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    path = Path(os.environ.get("TRACT_EVAL_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "prometheus" / "vicuna_eval.json").is_file():
        raise RuntimeError(f"shared benchmark data not found at {path}; set TRACT_EVAL_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def embedded_backend():
    from tract_eval.backends import create_backend

    # the same options as a default CLI run, so in-process CLI tests reuse this one model load
    return create_backend("transformers", None, device="auto", dtype="auto")


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_backend):
    return embedded_backend.tokenizer()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The fake backend's tokenizer saved to a folder (the OpenAI backend loads its tokenizer from one)."""
    from test_runner import LengthBackend

    folder = tmp_path_factory.mktemp("tokenizer")
    LengthBackend().tokenizer().save_pretrained(folder)
    return folder
