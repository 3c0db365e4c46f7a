"""Customer-care message router: ingest → classify → route → notify on Kafka.

The public API is small on purpose: the settings, the event contract and the errors.
Everything else is reached through the ``pipeline`` command or the stage packages.
"""

from pipeline.config import Settings, get_settings
from pipeline.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    DeliveryError,
    InvalidInput,
    ModelError,
    PayloadTooLarge,
    PipelineError,
    Unauthorized,
)
from pipeline.events import EVENT_TYPES

__all__ = [
    "EVENT_TYPES",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "DecodeError",
    "DeliveryError",
    "InvalidInput",
    "ModelError",
    "PayloadTooLarge",
    "PipelineError",
    "Settings",
    "Unauthorized",
    "get_settings",
]
