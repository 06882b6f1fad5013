"""The Lua scripts of shared/store/scripts/, put together from their files when the package is imported.

Each step's script is one ``.lua`` file; what several share (the runner's prologue, the usage
history's ``record_usage``, the save scripts' ``saved_state``) is a file of its own, joined in
front of it. Constants whose one place is Python (the history's layout, the claim flags) become
``local`` names after the prologue, so no number is written twice. pyproject.toml's package-data
carries the files into an installed package; the image copies shared/ whole.
"""

from collections.abc import Mapping
from importlib import resources

SCRIPTS = resources.files(__package__) / "scripts"


def _literal(value: int | float | str) -> str:
    """A constant as Lua source: numbers as they are, strings single-quoted (none holds a quote)."""
    return f"'{value}'" if isinstance(value, str) else repr(value)


def read(name: str) -> str:
    """The text of shared/store/scripts/<name>.lua."""
    return (SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")


def script(name: str, fragments: tuple[str, ...] = (), constants: Mapping[str, int | float | str] | None = None) -> str:
    """The script `name`: the prologue, `constants` as locals, the `fragments` files, then its own file."""
    parts = [read("prologue")]
    parts += [f"local {key} = {_literal(value)}" for key, value in (constants or {}).items()]
    parts += [read(fragment) for fragment in fragments]
    parts.append(read(name))
    return "\n".join(parts)
