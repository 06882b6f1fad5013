"""The hash-locked requirements*.lock are compiled from requirements*.txt, and still match them."""

import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devtools.harness import ROOT

# Each source and the lock `make lock` compiles from it.
LOCKS = {"requirements.txt": "requirements.lock", "requirements-dev.txt": "requirements-dev.lock"}
# A lock entry: `name==version [; marker] \` at the start of a line, then its hashes on indented lines.
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+).*?(?=^\S|\Z)", re.M | re.S)


def pins(source):
    """The name: version pins of a requirements file, following its -r includes."""
    found = {}
    for line in (ROOT / source).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found |= pins(line.removeprefix("-r ").strip())
        elif line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{source}: pin {line!r} exactly"
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def locked(lock):
    """The name: (version, number of hashes) entries of a lock file."""
    return {
        canonicalize_name(match[1]): (match[2], match[0].count("--hash=sha256:"))
        for match in ENTRY.finditer((ROOT / lock).read_text())
    }


@pytest.mark.parametrize(("source", "lock"), LOCKS.items())
def test_lock_holds_every_pin_at_its_version(source, lock):
    """A dependency added or bumped in a requirements file without `make lock` fails here."""
    entries = locked(lock)
    stale = {name: version for name, version in pins(source).items() if entries.get(name, (None,))[0] != version}
    assert not stale, f"{lock} does not match {source} for {stale}: run make lock"


@pytest.mark.parametrize("lock", LOCKS.values())
def test_every_locked_package_has_a_hash(lock):
    """pip --require-hashes refuses a lock with an unhashed entry; so does this, earlier."""
    entries = locked(lock)
    assert entries and not [name for name, (_, hashes) in entries.items() if hashes == 0]


def test_the_dev_lock_installs_what_the_image_runs():
    """Tests run against the very versions the image installs."""
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    assert {name: dev.get(name, (None,))[0] for name in runtime} == {name: v for name, (v, _) in runtime.items()}
