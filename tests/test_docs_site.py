"""The docs site builds with `mkdocs build --strict`, as `make docs` and CI build it.

Strict mode turns every warning into a failure: a link to a page or an anchor that does not
exist, a page left out of the nav, a missing include of CHANGELOG.md or of a README section
that the docs show rather than copy (mkdocs.yml's `validation` section, the snippets'
`check_paths`). The second test
proves the first can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Material prints a banner about MkDocs 2.0 on every build; it is not one of the build's warnings.
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_docs_site_builds_strictly(tmp_path):
    done = _build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    # the pages that include a file from the repository root got its text
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "launch/profile_model.py" in changelog  # CHANGELOG.md
    included = {  # page → a phrase of the README section it includes
        "package-map": "zero_comm.py",  # the layer table
        "method": "stdha_shift.py",  # the method-in-code table
        "": "no FLOP",  # the pitch, on the home page
    }
    for page, phrase in included.items():
        assert phrase in (tmp_path / "site" / page / "index.html").read_text(), page


def test_a_broken_link_fails_the_build(tmp_path):
    """A copy of the site with one link to a missing anchor and one to a missing page."""
    for name in ("mkdocs.yml", "CHANGELOG.md", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "speed.md"
    page.write_text(page.read_text() + "\n[a](data.md#no-such-anchor) [b](no-such-page.md)\n")
    done = _build(tmp_path, tmp_path / "site")
    assert done.returncode != 0
    assert "does not contain an anchor '#no-such-anchor'" in done.stderr, done.stderr[-3000:]
    assert "'no-such-page.md'" in done.stderr, done.stderr[-3000:]
