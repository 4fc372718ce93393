"""pmp_scrapy: extracts ManageEngine Patch Manager Plus patch inventories into a database."""

__version__ = "1.0.0"
