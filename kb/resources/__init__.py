"""The personas' recommended resources (``kb resources``): :mod:`kb.resources.catalog` decides which are
fetched and when, and records the outcomes; the copies themselves are crawled and written by
:mod:`ingest.crawl`."""
