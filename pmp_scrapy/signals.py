"""The project's own signals, sent through ``crawler.signals``.

* ``batch_committed(result, pages, gaps)``: the pipeline committed a batch; ``result`` is the
  :class:`~pmp_scrapy.storage.CheckpointResult`, ``pages`` the page numbers with data, ``gaps``
  the gap dicts just recorded.
* ``run_finished(summary)``: the checkpoint extension has decided the run's outcome; ``summary``
  is the JSON-ready run summary (exit code included). Sent once, at ``spider_closed``.
"""

batch_committed = object()
run_finished = object()
