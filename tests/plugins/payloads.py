"""Webhook payloads in the platforms' published formats, shared by the unit and integration tiers.

Sources (shapes and values as published; ids a test must control are parameters):

* WhatsApp text: Meta's sample ``messages`` webhook (App Dashboard › WhatsApp › Configuration ›
  Webhook fields › messages › Test; the "Text Messages" example of the Cloud API webhook
  payload examples): ``wa_id`` 16315551181, ``id`` ABGGFlA5Fpa, ``timestamp`` 1504902988,
  ``body`` "this is a text message", ``phone_number_id`` 123456123.
* WhatsApp media: the "Media Messages" examples of the same page (``image``/``document``
  objects with ``caption``, ``filename``, ``mime_type``, ``sha256``, ``id``).
* WhatsApp statuses: pywa ``tests/data/updates/message_status.json`` (recorded Cloud API
  webhooks: sent / delivered / read / failed with ``errors[]``, ``biz_opaque_callback_data``).
* VK: the Callback API format of dev.vk.com/ru/api/callback/getting-started (``confirmation``
  with ``group_id``; ``message_new`` with ``object.message`` and ``client_info`` since API
  5.103), values of a recorded ``message_new`` (date 1586054794, from_id/peer_id 228970688,
  id 135, conversation_message_id 127, event_id b0c936fa…).
* Twilio status callback: the parameters of Twilio's Messaging status-callback reference
  (``MessageStatus``, ``SmsStatus``, ``MessageSid``, ``ErrorCode``...).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

META_TEXT: dict[str, Any] = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "0",
            "changes": [
                {
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {
                            "display_phone_number": "16505551111",
                            "phone_number_id": "123456123",
                        },
                        "contacts": [
                            {"profile": {"name": "test user name"}, "wa_id": "16315551181"}
                        ],
                        "messages": [
                            {
                                "from": "16315551181",
                                "id": "ABGGFlA5Fpa",
                                "timestamp": "1504902988",
                                "type": "text",
                                "text": {"body": "this is a text message"},
                            }
                        ],
                    },
                }
            ],
        }
    ],
}


def whatsapp_messages(*messages: dict[str, Any]) -> dict[str, Any]:
    """Meta's sample webhook carrying ``messages`` instead of its one text message."""
    payload = copy.deepcopy(META_TEXT)
    payload["entry"][0]["changes"][0]["value"]["messages"] = list(messages)
    return payload


def whatsapp_image(
    mid: str, *, caption: str | None = None, media_id: str = "1234567890"
) -> dict[str, Any]:
    """An image message in the "Media Messages" shape, from the sample's customer."""
    image: dict[str, Any] = {"mime_type": "image/jpeg", "sha256": "IMAGE_HASH", "id": media_id}
    if caption is not None:
        image["caption"] = caption
    return {
        "from": "16315551181",
        "id": mid,
        "timestamp": "1504902990",
        "type": "image",
        "image": image,
    }


def whatsapp_status(**over: Any) -> dict[str, Any]:
    """A webhook with one ``statuses[]`` entry (pywa's recorded ``sent``, fields overridden)."""
    status: dict[str, Any] = {
        "id": "wamid.xyzxyz",
        "status": "sent",
        "timestamp": "1698266945",
        "recipient_id": "972987654321",
        "conversation": {"id": "7270432eae37498234f4444b35ffc5", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
    }
    status.update(over)
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "5467539754836534",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "972123456789",
                                "phone_number_id": "1122334455667",
                            },
                            "statuses": [status],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


VK_GROUP = 193668024


def vk_message_new(
    message: dict[str, Any] | None = None, *, secret: str = "vk-secret", **over: Any
) -> dict[str, Any]:
    """A recorded VK ``message_new`` (fields of ``object.message`` and the event overridden)."""
    msg: dict[str, Any] = {
        "date": 1586054794,
        "from_id": 228970688,
        "id": 135,
        "out": 0,
        "peer_id": 228970688,
        "text": "Здравствуйте, не пришёл заказ",
        "conversation_message_id": 127,
        "fwd_messages": [],
        "important": False,
        "random_id": 0,
        "attachments": [],
        "is_hidden": False,
    }
    msg.update(message or {})
    event: dict[str, Any] = {
        "type": "message_new",
        "object": {
            "message": msg,
            "client_info": {
                "button_actions": ["text", "vkpay", "open_app", "location", "open_link"],
                "keyboard": True,
                "inline_keyboard": True,
                "lang_id": 0,
            },
        },
        "group_id": VK_GROUP,
        "event_id": "b0c936fa537622981a096bd5e38a252e7cac0d20",
        "v": "5.199",
        "secret": secret,
    }
    event.update(over)
    return event


TWILIO_STATUS: dict[str, str] = {
    "SmsSid": "SM5a8d3cc3b3d44a1a9f8f4e4b3a3e2c1d",
    "SmsStatus": "delivered",
    "MessageStatus": "delivered",
    "To": "+14155552671",
    "MessageSid": "SM5a8d3cc3b3d44a1a9f8f4e4b3a3e2c1d",
    "AccountSid": "AC00000000000000000000000000000000",
    "From": "+15005550006",
    "ApiVersion": "2010-04-01",
}


class Payloads:
    """The published payloads and their builders, as the ``payloads`` fixture hands them out."""

    META_TEXT = META_TEXT
    TWILIO_STATUS = TWILIO_STATUS
    VK_GROUP = VK_GROUP
    whatsapp_messages = staticmethod(whatsapp_messages)
    whatsapp_image = staticmethod(whatsapp_image)
    whatsapp_status = staticmethod(whatsapp_status)
    vk_message_new = staticmethod(vk_message_new)


@pytest.fixture
def payloads() -> Payloads:
    """Webhook payloads in the platforms' published formats (sources in the module docstring)."""
    return Payloads()
