"""What an :class:`kb.index.engine.IndexEngine` builds from settings — its embedder and its vector store — and
the check that a remote embedder still serves the model its index was built with.

The store is an embedded Chroma folder of the workspace, or, with ``[store] url``, a Chroma server shared by
many workspaces: there each workspace's collections are named ``kb_<workspace id>_<fingerprint>``, with the
stable id of :meth:`kb.workspace.Workspace.workspace_id`, so moving the folder keeps its index.

A remote embedder (``openai-compatible:``) may change its model behind the same name; the vector it gives a
fixed probe text is recorded in the manifest when the index is built and compared on open: a vector that
moved means another model (:class:`kb.errors.EmbedderError`, ``kb index --rebuild``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kb.backends.chroma_server import ChromaServerStore
from kb.backends.embedders import Embedder, make_embedder
from kb.backends.store import ChromaStore, Store
from kb.errors import EmbedderError
from kb.index.indexer import collection_name
from kb.index.manifest import Manifest
from kb.settings import Settings
from kb.workspace import Workspace

PROBE_MIN_COSINE = 0.99  # a remote model's probe vector further from the recorded one: another model


def embedder_from(settings: Settings, workspace: Workspace) -> Embedder:
    """The embedder ``settings`` name (its model files cached beside the index unless said otherwise)."""
    st = settings
    cache = st.model_cache_dir or (workspace.state_dir / "models")
    return make_embedder(
        st.embedder,
        st.embedder_runtime,
        Path(cache),
        base_url=st.embed_base_url,
        api_key=st.embed_api_key.get_secret_value() if st.embed_api_key else None,
        timeout=st.embed_timeout,
        retries=st.embed_retries,
        batch_size=st.embed_batch,
    )


def store_from(settings: Settings, workspace: Workspace, fingerprint: str) -> Store:
    """The vector store of ``workspace``'s index with this ``fingerprint``."""
    cfg = settings.store
    if cfg.url:  # a Chroma server: this workspace's collections carry its stable id
        prefix = f"kb_{workspace.workspace_id()}_"
        return ChromaServerStore(
            cfg.url,
            prefix + fingerprint,
            prefix=prefix,
            tenant=cfg.tenant,
            database=cfg.database,
            headers={k: v.get_secret_value() for k, v in cfg.headers.items()},
            timeout=cfg.timeout,
            retries=cfg.retries,
        )
    # embedded: a folder of this workspace's own (names kept from before, no migration)
    return ChromaStore(workspace.state_dir / "chroma", collection_name(fingerprint))


def probe_key(embedder: Embedder) -> str:
    return f"probe:{embedder.model_id}"


def check_probe(embedder: Embedder, manifest: Manifest) -> None:
    """:class:`EmbedderError` when ``embedder``'s vector of the probe text moved since it was recorded
    (nothing to check for a local model, or before anything was recorded)."""
    probe = getattr(embedder, "probe_vector", None)
    recorded = manifest.get_meta(probe_key(embedder)) if probe is not None else None
    if probe is None or recorded is None:
        return
    vector = np.asarray(probe(), dtype=np.float32)
    old = np.asarray(json.loads(recorded), dtype=np.float32)
    same_shape = old.shape == vector.shape
    norms = float(np.linalg.norm(old) * np.linalg.norm(vector))
    cosine = float(old @ vector / max(norms, 1e-12)) if same_shape else 0.0
    if cosine < PROBE_MIN_COSINE:
        raise EmbedderError(
            f"The embedding server behind {embedder.model_id} changed its model: its vector of a fixed "
            f"probe text moved (cosine {cosine:.3f} to the one recorded when this index was built). "
            "Rebuild the index with: kb index --rebuild, or point KB_EMBED_BASE_URL at a server with "
            "the original model."
        )


def record_probe(embedder: Embedder, manifest: Manifest) -> None:
    """Record the probe vector of a remote embedder, once (the index was just built with it)."""
    probe = getattr(embedder, "probe_vector", None)
    if probe is not None and manifest.get_meta(probe_key(embedder)) is None:
        with manifest.db:
            manifest.set_meta(probe_key(embedder), json.dumps([round(float(x), 7) for x in probe()]))


def forget_probe(embedder: Embedder, manifest: Manifest) -> None:
    """``kb index --rebuild``: forget the model's cached vectors and its recorded probe."""
    manifest.drop_vectors(embedder.model_id)
    with manifest.db:
        manifest.db.execute("DELETE FROM meta WHERE key=?", (probe_key(embedder),))
