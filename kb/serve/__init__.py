"""Watching and serving: `kb watch` (kb.serve.run, kb.serve.watcher) and its clients (kb.serve.client).

Kept empty on purpose: a client importing kb.serve.client must not import the index stack."""
