"""The README's command, option and variable tables stay in step with the CLI."""

import re
from pathlib import Path

import click

from etl.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "qianfan-etl") -> set[str]:
    names: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names |= _commands(command, f"{prefix} {name}")
        else:
            names.add(f"{prefix} {name}")
    return names


def test_every_command_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(qianfan-etl [a-z ]+)` \|", README, re.MULTILINE))
    assert documented == _commands(cli)


def test_every_sync_option_is_documented() -> None:
    sync = cli.commands["sync"]
    options = {
        opt for param in sync.params if isinstance(param, click.Option) for opt in param.opts
    }
    long_options = {opt for opt in options if opt.startswith("--")}
    for option in long_options:
        assert f"`{option}" in README, f"{option} missing from the README"


def test_every_environment_variable_is_documented() -> None:
    envvars = {
        param.envvar
        for command in cli.commands.values()
        for param in command.params
        if isinstance(param.envvar, str)
    }
    for name in envvars | {"QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY"}:
        assert f"| `{name}` |" in README, f"{name} missing from the README"


def test_readme_exit_codes_match_the_error_classes() -> None:
    from etl import errors

    codes = {int(code) for code in re.findall(r"^\| (\d+) \|", README, re.MULTILINE)}
    classes = {
        value.exit_code
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.EtlError)
    }
    assert classes <= codes
    assert codes == {0, 1, 2, 65, 69, 74, 75, 77, 78}


def test_the_layout_table_names_every_module_and_nothing_that_is_gone() -> None:
    """The README's layout table matches the tree: each module of etl/ has a row (a package's
    row may name the package), and each row names a path that exists."""
    root = Path(__file__).resolve().parent.parent
    section = README.split("\n## Layout\n")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)
    assert [row for row in rows if not (root / row).exists()] == []
    modules = {
        str(path.relative_to(root))
        for path in (root / "etl").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    named = {row for row in rows if row.endswith(".py")}
    packages = tuple(row for row in rows if row.endswith("/"))
    assert {m for m in modules if m not in named and not m.startswith(packages)} == set()
