"""The AsyncAPI 3.0 document: valid against the official AsyncAPI 3.0.0 JSON Schema, in step
with the event models and the topics, and committed as generated (no drift)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline import asyncapi
from pipeline.config import Settings
from pipeline.events import EVENT_TYPES, InboundMessage, utcnow
from pipeline.runtime import departments
from pipeline.topics import TOPICS

SPEC = Path(__file__).resolve().parents[1] / "resources" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(asyncapi.render())
    return doc


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SPEC.read_text(encoding="utf-8"))
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema.Draft7Validator(schema)


def test_document_is_valid_asyncapi_3(
    document: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


def test_validation_rejects_a_broken_document(
    document: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    broken = json.loads(json.dumps(document))
    op = next(iter(broken["operations"].values()))
    op["action"] = "publish"  # AsyncAPI 2 wording, not 3
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(document))
    del broken["channels"]["inbound"]["address"]
    broken["channels"]["inbound"]["adress"] = "x"
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(document))  # deep: the Kafka binding's own schema
    broken["channels"]["kb"]["bindings"]["kafka"]["topicConfiguration"] = {
        "cleanup.policy": ["shred"]
    }
    assert not validator.is_valid(broken)


def test_every_topic_is_a_channel_with_its_key_and_both_sides(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert set(channels) == {t.name for t in TOPICS} | {asyncapi.DEPARTMENT_CHANNEL}
    for name, channel in channels.items():
        for msg_name, message in channel["messages"].items():
            assert message["payload"] == {"$ref": f"#/components/schemas/{msg_name}"}
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            assert message["contentType"] == "application/json"
        actions = {
            op["action"]
            for op in document["operations"].values()
            if op["channel"] == {"$ref": f"#/channels/{name}"}
        }
        assert actions == {"send", "receive"}, name
    for spec in TOPICS:
        channel = channels[spec.name]
        assert channel["address"] == Settings.model_construct().topic(spec.name)
        compacted = channel["bindings"]["kafka"].get("topicConfiguration", {})
        assert (compacted == {"cleanup.policy": ["compact"]}) == spec.compacted, spec.name


def test_every_event_type_travels_on_some_channel(document: dict[str, Any]) -> None:
    carried = {m for c in document["channels"].values() for m in c["messages"]}
    assert carried == set(EVENT_TYPES)


def test_department_channel_lists_the_workflow_departments(document: dict[str, Any]) -> None:
    tasks = document["channels"][asyncapi.DEPARTMENT_CHANNEL]
    assert tasks["address"] == "care.tasks.{department}"
    assert tasks["parameters"]["department"]["enum"] == departments(Settings.model_construct())
    sends = {
        op["tags"][0]["name"]
        for op in document["operations"].values()
        if op["channel"]["$ref"] == "#/channels/task-updates" and op["action"] == "send"
    }
    assert "departments" in sends


def test_messages_are_the_json_schemas_of_the_event_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(EVENT_TYPES) <= set(schemas)
    for name, model in EVENT_TYPES.items():
        assert set(schemas[name]["properties"]) == set(
            model.model_json_schema(mode="serialization")["properties"]
        ), name
    # A real record validates against its schema as the document states it.
    record = InboundMessage(
        message_id="msg_1", channel="telegram", channel_message_id="1", customer_id="c1",
        text="Где мой заказ?", received_at=utcnow(),
    )  # fmt: skip
    wire = json.loads(record.model_dump_json())
    resolver_doc = {"components": {"schemas": schemas}, **schemas["InboundMessage"]}
    jsonschema.Draft202012Validator(resolver_doc).validate(wire)
    del wire["customer_id"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(resolver_doc).validate(wire)


def test_committed_document_has_no_drift() -> None:
    assert not asyncapi.is_stale(), "run: pipeline asyncapi"


def test_drift_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.yaml"
    assert asyncapi.is_stale(path)
    path.write_text(asyncapi.render().replace("customer id", "client id"), encoding="utf-8")
    assert asyncapi.is_stale(path)
    path.write_text(asyncapi.render(), encoding="utf-8")
    assert not asyncapi.is_stale(path)


def test_pipeline_schemas_writes_and_checks_the_document_with_the_schemas(tmp_path: Path) -> None:
    from pipeline.cli import main

    assert main(["schemas", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "asyncapi.yaml").read_text(encoding="utf-8") == asyncapi.render()
    assert main(["schemas", "--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "asyncapi.yaml").write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    assert main(["schemas", "--check", "--out", str(tmp_path)]) == 1
