"""The README and docs/: a short README, every relative link and image resolving, the install/test commands of
.ci/run, no work history outside CHANGELOG.md."""
import re

from conftest import PROJECT_ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_resolves():
    readme = PROJECT_ROOT / "README.md"
    pages = [readme, *sorted((PROJECT_ROOT / "docs").glob("*.md")),
             *sorted((PROJECT_ROOT / "detection" / "models" / "weights").glob("*.md"))]
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


def test_readme_is_a_readable_length_and_says_how_to_install_cpu_torch():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    assert "download.pytorch.org/whl/cpu" in readme  # a CPU machine need not pull the CUDA wheels


def test_no_product_file_narrates_work_history():
    """Docs, code and configs describe what is; the history of figures lives in CHANGELOG.md, dated."""
    period = re.compile(r"\bsessions?[ -]\d|\bthis session\b|\bgit show [0-9a-f]{7}", re.IGNORECASE)
    files = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "CHANGELOG.md", *(PROJECT_ROOT / "docs").glob("*.md")]
    for folder in ("detection", "tools", "configs", "tests"):
        files += [p for p in (PROJECT_ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    hits = [f"{p.relative_to(PROJECT_ROOT)}: {m.group(0)}" for p in files for m in period.finditer(p.read_text())]
    assert not hits, hits[:10]
    weights = sorted((PROJECT_ROOT / "detection" / "models" / "weights").glob("*.pt"))
    assert len(weights) >= 2
    for w in weights:  # a model card beside each shipped file
        assert w.with_suffix(".md").is_file(), f"{w.name} has no model card"
