"""JSON Schemas of the event contract, generated from the models (``pipeline schemas``)."""

from __future__ import annotations

from pathlib import Path

import orjson

from pipeline.events import EVENT_TYPES

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def render() -> dict[str, bytes]:
    """File name → JSON Schema bytes, for every event type."""
    out: dict[str, bytes] = {}
    for name, model in EVENT_TYPES.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"urn:care-router:event:{name}:v1"
        out[f"{name}.schema.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, stale or unexpected."""
    expected = render()
    problems = [
        name
        for name, content in expected.items()
        if not (directory / name).is_file() or (directory / name).read_bytes() != content
    ]
    problems += [p.name for p in directory.glob("*.schema.json") if p.name not in expected]
    return sorted(problems)
