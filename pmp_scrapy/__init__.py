"""pmp_scrapy: extracts ManageEngine Patch Manager Plus patch inventories into a database."""

from pmp_scrapy import footprint

__version__ = "1.0.0"

# Before Scrapy walks its commands (which imports itemadapter) and downloads anything.
footprint.apply()
