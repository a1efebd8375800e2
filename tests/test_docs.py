"""The README and docs/: short README, every relative link and image resolves, install/test commands as in .ci/run."""
import re

from conftest import PROJECT_ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_short_and_links_resolve():
    readme = PROJECT_ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = [readme, *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
    assert {p.name for p in pages} >= {"data.md", "proposals.md", "classifiers.md", "evaluation.md", "scale.md"}
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if "shared" in path.parts and not path.exists():
                continue  # ../shared/ lives beside the project, not in it
            assert path.exists(), f"{page.name} links to a missing {target}"


def test_readme_commands_are_the_ci_commands():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    for line in ci.splitlines():
        if "# README:" in line:
            cmd = line.split("#")[0].strip()
            assert cmd in readme, f".ci/run runs {cmd!r}, which the README does not show"
