"""pmp_scrapy: extracts ManageEngine Patch Manager Plus patch inventories into a database."""

from pmp_scrapy.footprint import skip_unused_imports

__version__ = "1.0.0"

# Before Scrapy walks its commands (which imports itemadapter): see pmp_scrapy.footprint.
skip_unused_imports()
