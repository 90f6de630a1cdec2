"""Every Markdown file the repository cites exists inside the repository.

The repository must stand alone: a clone has to hold the documents its code, comments and docs
point to (docs/FORMULATION.md, docs/API.md, README.md, ...). This test reads every file that git
tracks (binary files such as the PNG plots are skipped), finds each token that names a Markdown
file, and checks it. The rule, kept deliberately simple:

1. A token is a run of path characters (letters, digits, `_ - . / ~`) ending in `.md`, so a
   Markdown link `[text](docs/API.md#errors)` contributes `docs/API.md` (the anchor is not
   checked). URLs (`scheme://...`) are removed from each line before searching.
2. The token must name an existing file, either relative to the repository root or relative to
   the folder of the file that cites it, and that file must lie inside the repository (a
   `../` path that leaves the repository counts as broken even if the file exists outside).
   This holds for bare names too: a bare `README.md` resolves from the root (or from the
   citing file's own folder); a bare name found in neither is reported, so prose should cite
   a document by its path from the root (`docs/FORMULATION.md`), not by its file name alone.
3. The only exceptions are the names in RUNTIME_OUTPUTS: files the code writes when it runs
   (`results.md`, the table python/amm_softmax/train.py writes into its --out folder), which a
   clone does not hold. A token is exempt when its last component is one of them.

Separately, no tracked file may mention the specification folder that lived outside the
repository (the strings are assembled below so that this file does not mention them itself).

All broken references are reported in one assertion message, one `file:line: reference` each.
The test skips itself where there is no git checkout (an installed copy of the tests).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Names of Markdown files that the code writes at run time (not part of a clone).
RUNTIME_OUTPUTS = frozenset({"results.md"})

#: A path-like token ending in .md (not .mdx, .md5, ...): at least one name character right
#: before the extension, so globs and format strings (`*.md`, `{name}.md`) are not tokens.
MD_TOKEN = re.compile(r"[A-Za-z0-9_.~/-]*[A-Za-z0-9_-]\.md(?![A-Za-z0-9_])")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")

#: The old, external specification folder; built from pieces so that this file passes its
#: own check.
FORBIDDEN = ("../" + "shared", "shared" + "/spec")


def _tracked_files(root: Path) -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot list the tracked files")
    if not (root / ".git").exists():
        pytest.skip(f"{root} is not a git checkout (no .git): an installed copy of the tests")
    result = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if result.returncode != 0:
        pytest.skip("git ls-files failed: " + result.stderr.decode(errors="replace").strip())
    return [name for name in result.stdout.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    """The file's text, or None for binary files (NUL bytes or not UTF-8) and missing ones
    (tracked but deleted in the working tree)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _resolves(token: str, citing_folder: Path, root: Path) -> bool:
    """Whether `token` names an existing file inside `root`, from the root or from the citing
    file's folder."""
    if token.startswith("/"):
        return False  # an absolute path is never inside a clone
    for base in (root, citing_folder):
        candidate = Path(os.path.normpath(base / token))
        if candidate.is_file() and (candidate == root or root in candidate.parents):
            return True
    return False


def find_broken_references(root: Path, files: list[str]) -> tuple[list[str], list[str]]:
    """(broken Markdown references, mentions of the external specification folder), each as
    `file:line: text`."""
    root = root.resolve()
    broken, forbidden = [], []
    for name in files:
        text = _text(root / name)
        if text is None:
            continue
        folder = (root / name).parent
        for number, line in enumerate(text.splitlines(), start=1):
            for needle in FORBIDDEN:
                if needle in line:
                    forbidden.append(f"{name}:{number}: {needle}")
            for token in MD_TOKEN.findall(URL.sub(" ", line)):
                if token.rstrip("/").rsplit("/", 1)[-1] in RUNTIME_OUTPUTS:
                    continue
                if not _resolves(token, folder, root):
                    broken.append(f"{name}:{number}: {token}")
    return broken, forbidden


def test_markdown_references_exist():
    broken, _ = find_broken_references(ROOT, _tracked_files(ROOT))
    assert not broken, (
        f"{len(broken)} reference(s) to Markdown files that do not exist in the repository "
        "(relative to the root or to the citing file's folder):\n  " + "\n  ".join(broken))


def test_no_reference_outside_the_repository():
    _, forbidden = find_broken_references(ROOT, _tracked_files(ROOT))
    assert not forbidden, (
        "the specification lives in docs/ now; these tracked files still mention the old "
        "folder outside the repository:\n  " + "\n  ".join(forbidden))


def test_the_checker_finds_a_broken_reference(tmp_path):
    """The checker itself, on a scratch tree: a good link, a bad one, a runtime output, a URL,
    a path leaving the tree and a binary file. (The extension is assembled, so that these
    made-up names are not references of this file.)"""
    md = ".m" + "d"
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(f"see [the maths](docs/MATHS{md}#angles)\n")
    (tmp_path / "docs" / f"MATHS{md}").write_text(f"back to [README](../README{md})\n")
    (tmp_path / "code.py").write_text(
        f"# docs/MATHS{md} and docs/MISSING{md}\n"
        f"# writes out/results{md}; see https://example.org/x/GONE{md}\n"
        f"# ../outside/THING{md}\n"
        f"# {FORBIDDEN[1]}/X\n")
    (tmp_path / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + f"docs/NOPE{md}".encode())
    broken, forbidden = find_broken_references(
        tmp_path, ["README.md", f"docs/MATHS{md}", "code.py", "plot.png"])
    assert broken == [f"code.py:1: docs/MISSING{md}", f"code.py:3: ../outside/THING{md}"]
    assert forbidden == ["code.py:4: " + FORBIDDEN[1]]
