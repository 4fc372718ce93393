"""Showing compliance answers: code-to-name translation (:mod:`.codes`), SLA days
(:mod:`.sla`), table/JSON/CSV rendering (:mod:`.render`) and the self-contained HTML report
(:mod:`.html`, :mod:`.charts`, ``templates/``). Nothing here imports SQLAlchemy or reads the
database: :mod:`pmp_scrapy.storage.reports` answers, this package shows the answers.

Importing the package is cheap (no Jinja2): the HTML modules are imported only when used.
"""
