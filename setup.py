"""Shim for ``scrapyd-deploy``, which builds its egg with ``python setup.py bdist_egg``.

All metadata lives in ``pyproject.toml`` and setuptools reads it from there: packages (spiders,
commands, storage, and the simulator, so ``-a demo=1`` works under scrapyd too), package data
(report templates) and the ``scrapy`` ``settings`` entry point, which scrapyd's runner loads.

When this file is copied without ``pyproject.toml`` (a bare ``pmp_scrapy/`` + ``setup.py`` +
``scrapy.cfg`` deploy directory), the egg is described here instead with the same packages,
package data and entry point; ``tests/test_install.py`` checks both eggs hold the same files.
Dependencies are never bundled: install ``requirements.txt`` into the scrapyd node's environment.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

if (HERE / "pyproject.toml").is_file():
    setup()
else:
    version = re.search(r'^__version__ = "([^"]+)"', (HERE / "pmp_scrapy" / "__init__.py").read_text(), re.MULTILINE)
    setup(
        name="pmp_scrapy",
        version=version.group(1) if version else "0",
        packages=find_packages(include=["pmp_scrapy", "pmp_scrapy.*"]),
        # Same kinds as pyproject.toml's [tool.setuptools.package-data].
        package_data={"pmp_scrapy": ["py.typed", "**/*.j2", "**/*.json", "**/*.sql", "**/*.css", "**/*.js",
                                     "**/*.svg", "**/*.html", "**/*.txt", "**/*.toml", "**/*.yaml", "**/*.csv"]},
        python_requires=">=3.11",
        entry_points={"scrapy": ["settings = pmp_scrapy.settings"]},
    )
