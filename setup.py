"""Packaging for scrapyd: ``scrapyd-deploy`` builds an egg from this file (``bdist_egg``).

The egg carries every ``pmp_scrapy`` package (spiders, commands, storage, and the simulator,
so ``-a demo=1`` works under scrapyd too) and registers the project's settings module, which
scrapyd's runner loads. Dependencies are not bundled: install ``requirements.txt`` into the
scrapyd node's environment.
"""

from setuptools import find_packages, setup

setup(
    name="pmp_scrapy",
    version="1.0.0",
    description="ManageEngine Patch Manager Plus DCAPI patch inventory into SQL",
    packages=find_packages(include=["pmp_scrapy", "pmp_scrapy.*"]),
    python_requires=">=3.11",
    entry_points={"scrapy": ["settings = pmp_scrapy.settings"]},
)
