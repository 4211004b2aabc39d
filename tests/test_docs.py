"""The docs a newcomer reads: a short README with the quick start first, pages whose links and
commands exist, and no reference to a file outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short_and_starts_with_the_quick_start():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    first_screen = "\n".join(lines[:45])
    for command in ("make demo", "make test", "ray up cluster.yaml", "python -m platform.tune",
                    "mlflow ui", "python -m platform.promote"):
        assert command in first_screen, command


def test_every_link_and_command_in_the_docs_exists():
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative links only
            assert (page.parent / target).exists(), f"{page.name}: link to {target}"
        for module in set(re.findall(r"python -m ((?:platform|benchmarks|trainables)\.\w+)", text)):
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{page.name}: {module}"


def test_nothing_refers_to_a_file_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|shared/seeds|DESIGN\.md")
    offenders = [name for name in tracked if name.endswith((".py", ".md", ".yaml", ".toml", ".sh"))
                 and name != "tests/test_docs.py" and outside.search((ROOT / name).read_text(errors="replace"))]
    assert offenders == []
