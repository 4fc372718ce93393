"""Custom Scrapy commands (``COMMANDS_MODULE``): ``crawl`` with exit codes, ``status``."""
