"""Prometheus-style grading prompts: parse the ``###`` sections and render them with jinja2."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .cards import card_dir, user_card_dirs
from .errors import ConfigError

_INSTRUCTION = "\n\n###The instruction to evaluate:\n"
_RESPONSE = "\n\n###Response to evaluate:\n"
_REFERENCE = re.compile(r"\n\n###Reference Answer \(Score (\d+)\):\n")
_RUBRIC = "\n\n###Score Rubrics:\n"
_FEEDBACK = "\n\n###Feedback:"
_SCALE = re.compile(r"an integer between (\d+) and (\d+)")


class PromptFormatError(ValueError):
    pass


@dataclass(frozen=True)
class GradingFields:
    """What a grading prompt is made of."""

    instruction: str
    response: str
    rubric: str
    reference_answer: str | None = None
    scale: tuple[int, int] = (1, 5)
    feedback_label: str = ""  # Prometheus-1 files say "Feedback: (write a feedback ...)"
    # --no-reference: the prompt is rendered whole, then the reference section is cut out of the
    # model input as TRACT's --remove_reference does (remove_reference_section)
    remove_reference: bool = False
    # a prompt used verbatim instead of rendering the fields (training rows: TRACT's own prompts)
    prompt_text: str | None = None

    def as_template_vars(self) -> dict:
        return {
            "instruction": self.instruction,
            "response": self.response,
            "rubric": self.rubric,
            "reference_answer": self.reference_answer,
            "low": self.scale[0],
            "high": self.scale[1],
            "feedback_label": self.feedback_label,
        }


def parse_prometheus_prompt(text: str) -> GradingFields:
    """Split a pre-formatted Prometheus absolute-grading prompt into its fields."""
    start = text.find(_INSTRUCTION)
    if not text.startswith("###Task Description:") or start < 0:
        raise PromptFormatError("missing '###Task Description:' or '###The instruction to evaluate:' section")
    task = text[:start]
    body_start = start + len(_INSTRUCTION)
    response_at = text.find(_RESPONSE, body_start)
    rubric_at = text.rfind(_RUBRIC)
    feedback_at = text.rfind(_FEEDBACK)
    if response_at < 0:
        raise PromptFormatError("missing '###Response to evaluate:' section")
    if rubric_at < response_at:
        raise PromptFormatError("missing '###Score Rubrics:' section after the response")
    if feedback_at < rubric_at:
        raise PromptFormatError("prompt does not end with a '###Feedback:' section")
    instruction = text[body_start:response_at]
    middle = text[response_at + len(_RESPONSE):rubric_at]
    reference = None
    references = list(_REFERENCE.finditer(middle))
    if references:
        last = references[-1]
        reference = middle[last.end():]
        middle = middle[:last.start()]
    rubric = text[rubric_at + len(_RUBRIC):feedback_at]
    scale_match = _SCALE.search(task)
    scale = (int(scale_match.group(1)), int(scale_match.group(2))) if scale_match else (1, 5)
    feedback_label = "Feedback: " if '"Feedback: (write a feedback' in task else ""
    return GradingFields(
        instruction=instruction,
        response=middle,
        rubric=rubric,
        reference_answer=reference,
        scale=scale,
        feedback_label=feedback_label,
    )


def format_rubric(criteria: str, descriptions: list[str], low: int = 1) -> str:
    """The Prometheus rubric block: ``[criteria]`` then ``Score k: ...`` lines."""
    lines = [f"[{criteria.strip()}]"]
    lines += [f"Score {low + i}: {d.strip()}" for i, d in enumerate(descriptions)]
    return "\n".join(lines)


TEMPLATE_SUFFIX = ".j2"


def sandboxed_environment(folder: Path, **options) -> jinja2.Environment:
    """Templates are data people share: they render in jinja2's immutable sandbox, where attributes such
    as ``__globals__`` and calls that mutate objects are refused (SecurityError), so no template runs code
    or reads files. Used for judge prompts and report templates alike (``options`` override the defaults)."""
    settings = {"keep_trailing_newline": True, "undefined": jinja2.StrictUndefined, "autoescape": False, **options}
    return ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(str(folder)), **settings)


@lru_cache(maxsize=None)
def _template(template: str) -> jinja2.Template:
    path = Path(template)
    if path.is_absolute():  # a user card's template, resolved when the card was read
        return sandboxed_environment(path.parent).get_template(path.name)
    return sandboxed_environment(card_dir("judges") / "templates").get_template(template)


# a template is named, never pathed: a plain file name looked up in the documented folders
_PLAIN_TEMPLATE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_template_name(template: str, card: str) -> str:
    if not isinstance(template, str) or not _PLAIN_TEMPLATE.fullmatch(template) or ".." in template:
        raise ConfigError(f"{card}: template {template!r} is not a plain name (letters, digits and . _ + -, no "
                          "path separators or '..'); put the file next to the card, in its templates/ or a "
                          "--cards folder and name it")
    return template


def resolve_template(template: str, card_path: Path | None) -> str:
    """Where a judge card's ``template`` lives: next to the card (or in its ``templates/``), then in the
    ``--cards`` folders, then among the built-in templates. A built-in template keeps its name; any other
    becomes the file's absolute path, so rendering does not depend on which folders are added later.
    The name is a plain file name (no folders, no ``..``): a card cannot point outside those folders."""
    check_template_name(template, str(card_path or "judge card"))
    name = template if template.endswith(TEMPLATE_SUFFIX) else template + TEMPLATE_SUFFIX
    folders = [card_path.parent, card_path.parent / "templates"] if card_path is not None else []
    for folder in user_card_dirs():
        folders += [folder / "judges" / "templates", folder / "templates", folder]
    builtin = card_dir("judges") / "templates"
    for folder in dict.fromkeys(folders):
        if (folder / name).is_file():
            return str((folder / name).resolve()) if folder.resolve() != builtin.resolve() else template
    if (builtin / name).is_file():
        return template
    looked = ", ".join(str(f) for f in [*dict.fromkeys(folders), builtin])
    raise ConfigError(f"{card_path or 'judge card'}: template {template!r} not found (looked for {name} in {looked})")


class UnsafeTemplate(ConfigError):
    """A card's template tried what the sandbox forbids (private attributes, mutation), or does not parse."""


def render_prompt(template: str, fields: GradingFields, card: str = "judge card") -> str:
    """Render a judge card's template (a built-in name from ``judges/templates/``, or a user template's
    path, as ``resolve_template`` gives it) with the grading fields, in the sandbox."""
    name = template if template.endswith(TEMPLATE_SUFFIX) else template + TEMPLATE_SUFFIX
    try:
        return _template(name).render(**fields.as_template_vars())
    except jinja2.exceptions.SecurityError as exc:
        raise UnsafeTemplate(f"judge card {card}: template {template} refused: {exc} (templates render in a "
                             "sandbox: no private attributes, no code)") from None
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise UnsafeTemplate(f"judge card {card}: template {template} line {exc.lineno}: {exc.message}") from None


SAMPLE_FIELDS = GradingFields(instruction="instruction", response="response", rubric="rubric",
                              reference_answer="reference answer")


def check_template_renders(template: str, card: str) -> None:
    """Render once with placeholder fields, so a template the sandbox refuses stops the run before any
    model loads (a missing field is the data's business, found per row)."""
    try:
        render_prompt(template, SAMPLE_FIELDS, card)
    except jinja2.exceptions.UndefinedError:
        pass


# --- the reference's text operations on model inputs (d223302/TRACT inference/) -----------------

INSTRUCTION_MARKER = "###The instruction to evaluate:"
_REFERENCE_MARKER = "###Reference Answer"
_RUBRIC_MARKER = "###Score Rubrics:"


def reference_strip(instruction: str) -> str:
    """A benchmark row's instruction as TRACT reads it: ``.rstrip().rstrip(",").rstrip('"').rstrip()``
    (dataset_utils.prepare_dataset), so a prompt ends ``###Feedback:`` with no trailing space."""
    return instruction.rstrip().rstrip(",").rstrip('"').rstrip()


def remove_reference_section(text: str) -> str:
    """TRACT's ``--remove_reference`` on a model input: what precedes ``###Reference Answer``, then
    ``###Score Rubrics:`` and what follows the last ``###Score Rubrics:``. The task description
    still mentions the reference answer, as in the reference. Text without a reference section is
    returned unchanged (the reference would duplicate the rubric there)."""
    if _REFERENCE_MARKER not in text or _RUBRIC_MARKER not in text:
        return text
    return text.split(_REFERENCE_MARKER)[0] + _RUBRIC_MARKER + text.split(_RUBRIC_MARKER)[-1]


@lru_cache(maxsize=None)
def score_only_instruction() -> str:
    """TRACT's score-only task description (inference.py ``no_feedback_instruction``, typo included)."""
    return (card_dir("judges") / "templates" / "tract_score_only_instruction.txt").read_text(encoding="utf-8")


def score_only_content(grading_prompt: str) -> str:
    """The score-only user turn: the score-only instruction + what follows the prompt's last
    ``###The instruction to evaluate:`` (inference.py, ``--mode score_only``)."""
    if INSTRUCTION_MARKER not in grading_prompt:
        raise PromptFormatError(f"a score-only prompt needs a {INSTRUCTION_MARKER!r} section")
    return score_only_instruction() + grading_prompt.split(INSTRUCTION_MARKER)[-1]
