"""Answers to bot commands: ``/start`` (and VK's «Начать» button) get the greeting.

A command is not a request: it is answered at once in the customer's channel and not
routed. The greeting names what the customer can do and promises an answer in the same
chat, in Russian or English (the platform's language hint; Russian otherwise).
"""

from __future__ import annotations

__all__ = ["GREETINGS", "greeting"]

GREETINGS: dict[str, str] = {
    "ru": (
        "Здравствуйте! Это служба поддержки. Напишите ваш вопрос одним сообщением: "
        "номер заказа, адрес магазина или номер карты помогут ответить быстрее. "
        "Мы ответим здесь же."
    ),
    "en": (
        "Hello! This is customer support. Please write your question in one message: an "
        "order number, the store's address or your card number help us answer faster. "
        "We will answer right here."
    ),
}


def greeting(language: str | None) -> tuple[str, str]:
    """(language, text) of the greeting for a customer whose platform says ``language``."""
    lang = language if language in GREETINGS else "ru"
    return lang, GREETINGS[lang]
