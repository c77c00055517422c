"""Reliability and security, round 2 (issue 19): what an adversarial user tried, each as a probe.

Card templates render in a sandbox and are named, never pathed; secrets never reach a file; impossible
log-probabilities are counted failures; identities (served model, benchmark) are compared before data
is mixed; server-caused failures are retried; broken plugins and boolean gold are named.
"""
from __future__ import annotations

import json

import pytest

from tract_eval.cli import main
from tract_eval.config import load_judge_card
from tract_eval.errors import ConfigError, UserError

pytestmark = pytest.mark.reliability

PAYLOADS = {  # what the issue ran: a command, and a file read into the model input
    "popen": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "open": "{{ self.__init__.__globals__.__builtins__.open('SECRET').read() }}",
}


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# -- 1. card templates cannot run code ----------------------------------------------------------------
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_a_card_template_that_reaches_for_code_is_refused_naming_card_and_template(tmp_path, capsys, payload):
    marker, secret = tmp_path / "MARKER", tmp_path / "SECRET"
    secret.write_text("the secret")
    text = PAYLOADS[payload].replace("MARKER", str(marker)).replace("SECRET", str(secret))
    (tmp_path / "evil.j2").write_text("###Task Description:\n" + text + "\n{{ instruction }}\n")
    card = tmp_path / "evil-card.yaml"
    card.write_text("protocol: cot-rail\ntemplate: evil\n")
    err = one_line_error(capsys, ["run", "--judge", str(card), "--bench", "vicuna", "--out", str(tmp_path / "o")])
    assert "judge card evil-card: template" in err and "evil.j2 refused" in err and "unsafe" in err
    assert not marker.exists() and "the secret" not in err


def test_the_report_template_renders_in_the_sandbox(tmp_path, monkeypatch):
    import shutil

    from tract_eval.cards import cards_root
    from tract_eval.prompts import UnsafeTemplate
    from tract_eval.reports.render import TEMPLATE, to_latex
    from tract_eval.reports.table import Table

    root = tmp_path / "cards"
    shutil.copytree(cards_root() / "judges", root / "judges")
    (root / "reports" / "templates").mkdir(parents=True)
    marker = tmp_path / "MARKER"
    (root / "reports" / "templates" / TEMPLATE).write_text(
        "<< cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() >>")
    monkeypatch.setenv("TRACT_EVAL_CARDS", str(root))
    with pytest.raises(UnsafeTemplate, match=f"report template .*{TEMPLATE} refused"):
        to_latex(Table(judges=[], columns=[], cells={}, counts={}, benches=[], averaged=[]))
    assert not marker.exists()


# -- 2. template names are names ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../../../tmp/x", "/etc/passwd", "sub/x", "..", "x/../../y"])
def test_a_template_name_that_is_a_path_is_refused(tmp_path, name):
    (tmp_path / "x.j2").write_text("{{ instruction }}")
    card = tmp_path / "card.yaml"
    card.write_text(f"protocol: cot-rail\ntemplate: {json.dumps(name)}\n")
    with pytest.raises(ConfigError, match=r"template .* is not a plain name"):
        load_judge_card(str(card))
