"""``tract-eval view`` without a browser: what the site holds, escaping in the files, user errors, --serve."""
from __future__ import annotations

import http.client
import json
import re
import threading
from pathlib import Path

import pytest

from reports_helpers import make_runs
from tract_eval.cli import main
from tract_eval.reports.render import counts_text
from tract_eval.reports.runs import collect_runs
from tract_eval.reports.stats import parse_measures
from tract_eval.reports.table import build_table
from tract_eval.reports.view import write_site
from tract_eval.reports.view.samples import script_json
from view_helpers import CLOSE_SCRIPT, IMAGE, PAYLOADS, SCRIPT, TEXTAREA, hostile_runs, write_run, full_row


@pytest.fixture
def runs(tmp_path) -> Path:
    return make_runs(tmp_path / "runs")


def _cells(html: str) -> list[str]:
    """The text of the report table's value cells, marks included (* and the interval)."""
    body = html.split('<table class="report">', 1)[1].split("</table>", 1)[0]
    return [re.sub(r"<[^>]+>", " ", cell).split() for cell in re.findall(r'<td class="num[^"]*">(.*?)</td>', body)]


def test_overview_shows_the_reports_numbers(runs, tmp_path):
    site = write_site([runs], tmp_path / "site")
    html = site.index.read_text()
    table = build_table(collect_runs([runs]), parse_measures("r,rho"))
    expected = [[table.cells[j, c].text(c) + ("*" if table.cells[j, c].partial else "")]
                if (j, c) in table.cells else ["–"] for j in table.judges for c in table.columns]
    assert _cells(html) == expected
    for judge in table.judges:  # counts (used/total, parse failures) as the markdown report prints them
        for bench in table.benches:
            assert counts_text(table, judge, bench) in html
    assert "beta" in html and "9/10, 1 pf" in html  # beta's one parse failure on Vicuna
    assert html.count('class="num best"') >= 1 and "Vicuna Bench" in html and "RewardBench" in html
    assert site.runs == 9 and (tmp_path / "site" / "compare" / "vicuna.html").is_file()


def test_overview_intervals_when_asked(runs, tmp_path):
    write_site([runs], tmp_path / "site", ci=True, resamples=50, seed=3)
    html = (tmp_path / "site" / "index.html").read_text()
    table = build_table(collect_runs([runs]), parse_measures("r,rho"), ci=True, resamples=50, seed=3)
    column = table.columns[0]
    assert f'<span class="ci">{table.cells["alpha", column].interval(column)}</span>' in html
    assert "percentile bootstrap intervals" in html


def test_run_page_scatter_identity_and_diagnostics(runs, tmp_path):
    folder = runs / "alpha" / "vicuna"
    manifest = {"identity": {"model": {"model": "http://user:hunter2@host/m"}, "api_key": "sk-secret"},
                "fingerprint": "abc123", "sessions": [{"command": ["run", "--api-key", "sk-secret2"], "host": "h"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "diagnostics.json").write_text(json.dumps({"calibration": {"ece": 0.123456}}))
    (folder / "reliability.png").write_bytes(b"\x89PNG fake")
    write_site([runs], tmp_path / "site")
    page = (tmp_path / "site" / "runs" / "alpha__vicuna.html").read_text()
    assert page.count("<circle") == 10  # one point per sample with gold and prediction
    assert "hunter2" not in page and "sk-secret" not in page and "***" in page and "abc123" in page
    assert "calibration.ece" in page and "0.1235" in page
    assert (tmp_path / "site" / "plots" / "alpha__vicuna" / "reliability.png").read_bytes() == b"\x89PNG fake"
    other = (tmp_path / "site" / "runs" / "beta__vicuna.html").read_text()
    # no diagnostics.json in beta's folder: computed for the site (no model needed), the run folder left alone
    assert "calibration.ece" in other and not (runs / "beta" / "vicuna" / "diagnostics.json").exists()
    pairwise = (tmp_path / "site" / "runs" / "alpha__rewardbench.html").read_text()
    assert "Chosen against rejected" in pairwise and pairwise.count("<circle") == 18


def test_data_script_holds_every_row_and_no_markup(tmp_path):
    runs = hostile_runs(tmp_path / "runs")
    write_site([runs], tmp_path / "site")
    script = (tmp_path / "site" / "data" / "alpha__vicuna.js").read_text()
    assert "<" not in script and ">" not in script and "&" not in script  # so no "</script>" either
    payload = script.split(" = ", 2)[-1].rstrip(";\n")
    data = json.loads(payload)
    assert [r["id"] for r in data["rows"]][:4] == [f"s{i}-{p}" for i, p in enumerate(PAYLOADS)]
    assert data["rows"][0]["cots"][0].startswith(SCRIPT)
    assert data["rows"][4]["status"] == "parse_failure" and SCRIPT in data["rows"][4]["error"]
    pairs = json.loads((tmp_path / "site" / "data" / "alpha__rewardbench.js").read_text().split(" = ", 2)[-1]
                       .rstrip(";\n"))["pairs"]
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs[:2]] == [(0, 1, 2.0), (2, 3, 1.0)]


def test_pages_escape_names_and_ids(tmp_path):
    runs = hostile_runs(tmp_path / "runs")
    write_site([runs], tmp_path / "site")
    for page in (tmp_path / "site").rglob("*.html"):
        html = page.read_text()
        for payload in PAYLOADS:
            assert payload not in html, (page, payload)
        ours = re.compile(r'<img class="plot" src="\.\./plots/[\w.-]+/(reliability|distribution)\.png" alt="\w+\.png">')
        assert all(ours.fullmatch(tag) for tag in re.findall(r"<img[^>]*>", html)), page  # only our own plots
        assert html.count("<script") == html.count("<script src=")
    index = (tmp_path / "site" / "index.html").read_text()
    assert "beta&lt;img src=x onerror=" in index


def test_script_json_is_a_javascript_expression():
    text = script_json({"a": CLOSE_SCRIPT + TEXTAREA + "&\u2028", "b": float("nan")})
    assert not set("<>&\u2028") & set(text)
    assert json.loads(text.replace("NaN", "null"))["a"] == CLOSE_SCRIPT + TEXTAREA + "&\u2028"


def test_rebuild_replaces_its_own_site(runs, tmp_path):
    out = tmp_path / "site"
    write_site([runs], out)
    (out / "runs" / "stale.html").write_text("old")
    write_site([runs / "alpha"], out)
    assert not (out / "runs" / "stale.html").exists() and len(list((out / "runs").iterdir())) == 3


@pytest.mark.parametrize("case", ["no-run", "missing", "corrupt", "out-is-file", "out-under-file", "out-foreign",
                                  "bad-metric"])
def test_user_errors_are_one_line(case, runs, tmp_path, capsys):
    out = tmp_path / "site"
    args = [str(runs)]
    if case == "no-run":
        (tmp_path / "empty").mkdir()
        args = [str(tmp_path / "empty")]
    elif case == "missing":
        args = [str(tmp_path / "nowhere")]
    elif case == "corrupt":
        with open(runs / "alpha" / "vicuna" / "predictions.jsonl", "a") as fh:
            fh.write("{not json\n{}\n")
    elif case == "out-is-file":
        out.write_text("x")
    elif case == "out-under-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "site"
    elif case == "out-foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    extra = ["--metrics", "nope"] if case == "bad-metric" else []
    assert main(["view", *args, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tract-eval view: error: ") and "\n" not in err, err
    if case == "out-foreign":
        assert (out / "notes.txt").read_text() == "mine"


def test_open_hands_the_index_to_the_browser(runs, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main(["view", str(runs), "--out", str(tmp_path / "site"), "--open"]) == 0
    assert opened == [(tmp_path / "site" / "index.html").resolve().as_uri()]


@pytest.mark.slow
def test_serve_is_local_read_only_and_confined(runs, tmp_path):
    from tract_eval.reports.view.serve import make_server

    site = tmp_path / "site"
    write_site([runs], site)
    (tmp_path / "secret.txt").write_text("outside")
    (site / "runs" / "link.txt").symlink_to(tmp_path / "secret.txt")
    server = make_server(site, 0)
    host, port = server.server_address
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def request(method: str, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()

    try:
        status, body = request("GET", "/")
        assert status == 200 and b"Overview" in body
        assert request("GET", "/assets/view.js")[0] == 200
        assert request("GET", "/../secret.txt")[0] == 404
        assert request("GET", "/%2e%2e/secret.txt")[0] == 404
        assert request("GET", "/runs/link.txt")[0] == 404  # a link out of the site
        assert request("GET", "/data/")[0] == 404  # no listings
        assert request("POST", "/index.html")[0] == 501
        assert request("PUT", "/index.html")[0] == 501
    finally:
        server.shutdown()
        server.server_close()


def test_serve_refuses_a_bad_port(runs, tmp_path, capsys):
    assert main(["view", str(runs), "--out", str(tmp_path / "site"), "--serve", "70000"]) == 2
    assert "--serve 70000" in capsys.readouterr().err
