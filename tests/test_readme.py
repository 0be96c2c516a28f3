"""README.md's configuration tables say what `zeroi2v/config.py` does: every key, its default."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from zeroi2v import config

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("model", "adapt", "data", "optim", "train", "tracking", "tune")
_ROW = re.compile(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| ([^|]+) \|", re.M)


def _documented() -> list[tuple[str, str]]:
    """(key, default cell) of every row of every `| key | default | meaning |` table."""
    rows = []
    for table in README.read_text().split("| key | default | meaning |")[1:]:
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
        assert _value(cell) == expected, f"README says {key} defaults to {cell}"


def test_the_layer_table_names_every_module():
    """README's "The package reads bottom-up" table is where a reader looks a module up."""
    table = README.read_text().split("| layer | modules | job |")[1].split("\n\n")[0]
    named = set(re.findall(r"([a-z_0-9]+\.py)`", table))
    package = README.parent / "zeroi2v"
    modules = {p.name for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == []


def _expand(pattern: str) -> list[str]:
    """Shell brace expansion: `a_{1,2}.json` → a_1.json, a_2.json."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [x for part in match.group(1).split(",") for x in _expand(head + part.strip() + tail)]


def test_every_file_the_readme_names_exists():
    """Paths in the repository (modules, tests, configs, scripts), except those of the section
    on what moved; `$k`-style shell variables and `stepN`-style placeholders are left out."""
    text = README.read_text().split("## Changes to the command line")[0]
    roots = "zeroi2v|tests|bench|launch|configs|scripts|data_prep|docs"
    named = re.findall(rf"(?<![\w/.$-])((?:{roots})/[\w./{{}},-]+)(?![\w$])", text)
    files = {path for name in named for path in _expand(name.rstrip(".,"))}
    root = README.parent
    assert sorted(f for f in files if not (root / f).exists()) == []
