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


_session_models: list = []  # create_backend's cache entry for the embedded model, once it is loaded


@pytest.fixture(scope="session")
def embedded_backend():
    from tract_eval import backends

    # the same options as a default CLI run, so in-process CLI tests reuse this one model load
    backend = backends.create_backend("transformers", None, device="auto", dtype="auto")
    _session_models.append(backends._last)
    return backend


@pytest.fixture(autouse=True)
def _embedded_model_stays_cached():
    """Each test starts with the session's embedded model as the backend ``create_backend`` hands out.

    create_backend keeps only the last backend it built, so an OpenAI or adapter backend made by an
    earlier test would otherwise make the next in-process CLI run load the embedded model again."""
    if _session_models:
        from tract_eval import backends

        backends._last = _session_models[0]


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


# -- the reliability suite's counts (issue closing notes quote them) ------------------------------
_reliability = {"probes": 0, "held": 0, "failed": [], "marked": set()}


def pytest_collection_modifyitems(items):
    _reliability["marked"].update(item.nodeid for item in items if item.get_closest_marker("reliability"))


def pytest_runtest_logreport(report):
    """Each reliability test (each parametrised case) is one probe; it held when it passed."""
    if report.nodeid not in _reliability["marked"]:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.outcome == "skipped":
            return
        _reliability["probes"] += 1
        if report.outcome == "passed":
            _reliability["held"] += 1
        else:
            _reliability["failed"].append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _reliability["probes"]:
        terminalreporter.write_line(f"reliability suite: {_reliability['probes']} probes, "
                                    f"{_reliability['held']} held")
        for nodeid in _reliability["failed"]:
            terminalreporter.write_line(f"  not held: {nodeid}")
