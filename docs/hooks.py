"""MkDocs hook: publish the committed results (report tables, perf runs, the scaling figure) in the site.

They live outside ``docs/`` (``reports/``, ``perf/results/``), where the commands that make them write
them; the docs link them as ``repo/<path in the repository>`` (e.g. ``repo/reports/table2.md``), and
``mkdocs build --strict`` then checks those links like any other. Nothing is copied into ``docs/``.
"""
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = ("reports", "perf/results")
SUFFIXES = {".md", ".png", ".svg", ".csv", ".json", ".tex"}


def on_files(files, config):
    for folder in PUBLISHED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "templates" not in path.parts:
                uri = "repo/" + path.relative_to(REPO).as_posix()
                file = File.generated(config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
                files.append(file)
    return files
