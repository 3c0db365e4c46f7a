"""The package's public API is exactly what ``pipeline.__all__`` names (as httpx checks)."""

from __future__ import annotations

import types

import pipeline


def test_public_api_is_explicit() -> None:
    public = {
        name
        for name in dir(pipeline)
        if not name.startswith("_") and not isinstance(getattr(pipeline, name), types.ModuleType)
    }
    assert public == set(pipeline.__all__)
