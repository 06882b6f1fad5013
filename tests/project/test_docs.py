"""The documentation stays true to the code: every setting is documented, every relative link resolves."""

import re

import pytest

from devtools.harness import ROOT
from shared.runtime.gunicorn_settings import WHOLE_NUMBERS
from shared.runtime.settings import SETTING_NAMES

OPERATIONS = ROOT / "docs" / "operations.md"
DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "deploy").rglob("*.md"),
        *(ROOT / "bench").glob("*.md"),
    ]
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def gunicorn_setting_names():
    """The environment variables gunicorn.conf.py reads: its numbers' table, and what its source reads itself."""
    source = (ROOT / "gunicorn.conf.py").read_text()
    read = set(re.findall(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""", source))
    return read | set(WHOLE_NUMBERS)


def configuration_table_names():
    """The variable names in the first column of the configuration table in docs/operations.md."""
    text = OPERATIONS.read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def test_the_gunicorn_settings_are_found_in_its_source():
    # Guards the regular expression above: an empty set would make the next test pass vacuously.
    expected = {"PORT", "HOST", "WEB_CONCURRENCY", "GUNICORN_TIMEOUT", "PROMETHEUS_MULTIPROC_DIR"}
    assert expected <= gunicorn_setting_names()


def test_every_setting_the_code_reads_is_in_the_configuration_table():
    read = set(SETTING_NAMES) | gunicorn_setting_names()
    missing = read - configuration_table_names()
    assert not missing, f"settings missing from the table in docs/operations.md: {sorted(missing)}"


def test_the_configuration_table_lists_only_settings_something_reads():
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_settings = {name for name in ("APP_MODULE",) if f"${name}" in dockerfile}
    documented_only = configuration_table_names() - set(SETTING_NAMES) - gunicorn_setting_names() - image_settings
    assert not documented_only, f"documented but read by nothing: {sorted(documented_only)}"


def heading_anchors(path):
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def relative_links():
    """(document, target) for every link in the docs that is not an absolute URL."""
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                yield doc, target


def test_the_docs_have_links_to_check():
    docs = {doc.relative_to(ROOT).as_posix() for doc, _ in relative_links()}
    assert {"README.md", "docs/api.md", "docs/operations.md", "docs/development.md"} <= docs


@pytest.mark.parametrize(
    ("doc", "target"), [pytest.param(d, t, id=f"{d.relative_to(ROOT)}:{t}") for d, t in relative_links()]
)
def test_every_relative_link_resolves(doc, target):
    path_part, _, anchor = target.partition("#")
    linked = (doc.parent / path_part).resolve() if path_part else doc
    assert linked.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor:
        assert linked.suffix == ".md", f"{target}: an anchor into a file that is not Markdown"
        assert anchor in heading_anchors(linked), f"{doc.relative_to(ROOT)} links to {target}: no such heading"


def test_the_readme_stays_short_and_says_how_to_run_and_test():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make run" in readme and "make test" in readme
