"""Build hook: the wheel carries the top-level alembic.ini, migrations/ and sql/ (the source
of truth) as etl/_schema/, so an installed qianfan-etl can migrate from any directory."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("alembic.ini", "migrations", "sql")


class BuildWithSchema(build_py):
    """build_py, then copy the schema files into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        target = Path(self.build_lib, "etl", "_schema")
        for name in SHIPPED:
            source = Path(name)
            if source.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(source, target / name, ignore=ignore, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithSchema})
