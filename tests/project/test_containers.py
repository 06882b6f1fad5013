"""The container build and compose.yaml: a small build context, one image, ports on loopback only."""

import fnmatch
import re

import yaml

from devtools.harness import ROOT

APP_SERVICES = ("agent", "cost", "forecast")


def dockerignore_excludes(path):
    """Whether .dockerignore keeps `path` (relative, '/'-separated) out of the build context; last match wins."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        # A pattern matches the path or any directory above it; **/ matches at any depth.
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            candidates = ["/".join(parts[i : j + 1]) for i in range(len(parts)) for j in range(i, len(parts))]
            hit = any(fnmatch.fnmatch(c, pattern[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not negated
    return excluded


def copied_sources():
    """Every source path the Dockerfile COPYs from the build context."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    return sources


def test_the_build_context_holds_what_the_image_copies():
    for source in copied_sources():
        assert not dockerignore_excludes(source.rstrip("/")), f"{source} is copied but left out of the context"
        if (ROOT / source).is_dir():
            for path in (ROOT / source).rglob("*.py"):
                assert not dockerignore_excludes(path.relative_to(ROOT).as_posix()), path


def test_the_build_context_leaves_out_git_the_virtualenv_caches_and_tests():
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/project/test_deploy.py",
        "docs/api.md",
        "README.md",
        "shared/__pycache__/web.cpython-311.pyc",
        ".pytest_cache/README.md",
        "bench/run.py",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the docker daemon"


def compose_services():
    """compose.yaml's services, with YAML merge keys resolved."""
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def test_compose_builds_one_image_and_every_app_service_runs_it():
    services = compose_services()
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1 and not images & {None}
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["agent"], "one service builds the image; the others reuse it"
    for name in ("cost", "forecast"):
        assert services[name]["pull_policy"] == "never" and "command" not in services[name]


def test_compose_publishes_the_services_on_loopback_only():
    for name, service in compose_services().items():
        for mapping in service.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", str(mapping)), f"{name} publishes {mapping} beyond loopback"
    assert compose_services()["cost"]["ports"] and compose_services()["forecast"]["ports"]
