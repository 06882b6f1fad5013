"""The import contracts of pyproject.toml hold on this tree, and each one fails when an import breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.harness import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("shared", "cost_service", "forecast_service", "devtools", "bench", "tests")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make venv)")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports run on a tree, with that tree first on the import path."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tree(tmp_path):
    """A copy of the packages and the contracts that a test may break."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # A rule that reached up for the service descriptors.
        ("shared/core/rules.py", "import shared.web.services", "shared/ is layered"),
        # The repository calling the agent: store and delivery are siblings that know nothing of each other.
        ("shared/store/repository.py", "import shared.delivery.webhook", "shared/ is layered"),
        # The flow reading the process's settings module instead of being handed its values.
        ("shared/flow/ingest.py", "import shared.runtime.settings", "shared/ is layered"),
        # A pure module doing I/O.
        ("shared/core/episodes.py", "import redis", "core is pure"),
        ("shared/web/probes.py", "import tests.conftest", "the product does not import its tools"),
        ("bench/payloads.py", "import tests.conftest", "bench/ and devtools/ do not import the tests"),
    ],
)
def test_an_import_against_the_layers_fails_lint(tree, module, line, contract):
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tree)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout


def test_a_folder_outside_the_layers_fails_lint(tree):
    # exhaustive = true: a new subpackage of shared/ must be given its place in the picture.
    (tree / "shared" / "misc").mkdir()
    (tree / "shared" / "misc" / "__init__.py").write_text("")
    done = lint_imports(tree)
    assert done.returncode != 0
    assert "shared.misc" in done.stdout + done.stderr
