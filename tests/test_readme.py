"""The README and the docs site say what the code does.

The configuration tables (docs/configuration.md, docs/ava.md) give every key of
`zeroi2v/config.py` with its default; the README's package map names every module; every
repository path the README or a docs page names exists. The changelog is left out: it names
what moved away.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from zeroi2v import config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SECTIONS = ("model", "adapt", "data", "optim", "train", "tracking", "tune")
_ROW = re.compile(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| ([^|]+) \|", re.M)


def _documented() -> list[tuple[str, str]]:
    """(key, default cell) of every row of every `| key | default | meaning |` table of the docs."""
    rows = []
    text = "\n\n".join(page.read_text() for page in DOCS)
    for table in text.split("| key | default | meaning |")[1:]:
        body = table.split("\n\n")[0]
        rows += [(key, cell.strip()) for key, cell in _ROW.findall(body)]
    return rows


def _defaults() -> dict[str, object]:
    cfg = config.Config(tune=config.TuneConfig())
    return {
        f"{section}.{key}": value
        for section in SECTIONS
        for key, value in getattr(cfg, section).model_dump(mode="json").items()
    }


def _value(cell: str) -> object:
    text = cell.strip("`")
    if re.fullmatch(r"\d+/\d+", text):
        return float(Fraction(text))
    return json.loads(text)


def test_every_config_key_is_documented_with_its_default():
    documented, defaults = _documented(), _defaults()
    assert sorted({key for key, _ in documented} ^ set(defaults)) == []
    for key, cell in documented:
        expected = defaults[key]
        if isinstance(expected, float):
            expected = pytest.approx(expected)
        assert _value(cell) == expected, f"the docs say {key} defaults to {cell}"


def test_the_layer_table_names_every_module():
    """The README's "Map of the package" table is where a reader looks a module up."""
    table = README.read_text().split("| layer | modules | job |")[1].split("\n\n")[0]
    named = set(re.findall(r"([a-z_0-9]+\.py)`", table))
    package = ROOT / "zeroi2v"
    modules = {p.name for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == []


def _expand(pattern: str) -> list[str]:
    """Shell brace expansion: `a_{1,2}.json` → a_1.json, a_2.json."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [x for part in match.group(1).split(",") for x in _expand(head + part.strip() + tail)]


def test_every_file_the_docs_name_exists():
    """Paths in the repository (modules, tests, configs, scripts, docs pages) that the README or
    a docs page names; `$k`-style shell variables and `stepN`-style placeholders are left out."""
    roots = "zeroi2v|tests|bench|launch|configs|scripts|data_prep|docs"
    missing = []
    for page in [README, *DOCS]:
        named = re.findall(rf"(?<![\w/.$-])((?:{roots})/[\w./{{}},-]+)(?![\w$])", page.read_text())
        files = {path for name in named for path in _expand(name.rstrip(".,"))}
        where = page.relative_to(ROOT).as_posix()
        missing += [f"{where}: {f}" for f in sorted(files) if not (ROOT / f).exists()]
    assert missing == []
