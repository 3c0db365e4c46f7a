"""E-mails the notify stage sends: requests to external parties and replies to e-mail customers.

Pure: the same event and settings give the same message, byte for byte — the
``Message-ID`` is derived from the sub-request / reply id and ``Date`` from its
``created_at``, so a resend after a crash carries the same id and is recognisable as a
duplicate by the recipient's mail client and by us.

External e-mails (``SubRequest`` of kind external or broadcast) are written in the
customer's language (``ru`` or ``en``; anything else falls back to English), carry the
relevant text span, store, entities, priority and SLA deadline, and a ``Reply-To`` of
``reply+TOKEN@<reply_domain>`` so the ingest SMTP server can turn the answer into a
``TaskUpdate``. Card numbers, phone numbers and e-mail addresses in the customer's text
and in entity values are masked (``redact``); the customer's name and contacts are not
sent to external parties at all (data minimisation: the store needs the problem, not
the person).
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from datetime import datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from pipeline.config import Settings
from pipeline.domain.links import responder_url
from pipeline.domain.tokens import reply_address
from pipeline.errors import InvalidInput
from pipeline.events import Entity, Reply, ReplyKind, SubRequest, SubRequestKind
from pipeline.notify.redact import mask_card, redact

__all__ = [
    "compose_external",
    "compose_reply_email",
    "message_id_for",
    "template_language",
]

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._\-+]")

_TEXT: dict[str, dict[str, str]] = {
    "ru": {
        "subject": "[{case_id}/{sr_id}] Запрос по обращению клиента: {topic}{store}{priority}",
        "subject_store": " — магазин {store}",
        "greeting": "Здравствуйте!",
        "intro_external": (
            "Клиент обратился в нашу службу поддержки с вопросом, который требует вашего "
            "участия. Пожалуйста, разберитесь в ситуации и сообщите нам результат."
        ),
        "intro_broadcast": (
            "Мы получаем похожие обращения клиентов, которые могут касаться и вас. "
            "Пожалуйста, проверьте ситуацию у себя и сообщите нам результат."
        ),
        "case": "Обращение",
        "sub_request": "Запрос",
        "topic": "Тема",
        "store": "Магазин",
        "priority": "Приоритет",
        "due": "Срок ответа",
        "span": "Суть обращения",
        "details": "Данные из обращения",
        "full_text": "Полный текст сообщения клиента",
        "instruction": (
            "Чтобы ответить, просто нажмите «Ответить» и напишите, что сделано: ваш ответ "
            "автоматически попадёт в карточку обращения. Пожалуйста, не меняйте адрес "
            "получателя — в нём номер вашего запроса. Данные клиента (номера карт, телефоны, "
            "адреса эл. почты) скрыты."
        ),
        "answer_page": "Или ответьте на странице (без входа в систему): {url}",
        "subject_escalation": (
            "[{case_id}/{sr_id}] Просрочен срок {deadline}: {department}{priority}"
        ),
        "subject_alert": "[{case_id}/{sr_id}] Внимание ({flags}): {department}{priority}",
        "intro_escalation": (
            "По обращению клиента истёк срок {deadline} в отделе «{department}». Пожалуйста, "
            "выясните, кто им занимается, и помогите закрыть его как можно скорее."
        ),
        "intro_alert": (
            "Обращение требует вашего внимания: {flags}. Запрос передан в отдел «{department}»; "
            "проследите, пожалуйста, чтобы клиенту ответили в срок."
        ),
        "deadline_first_response": "первого ответа",
        "deadline_resolution": "решения",
        "missed": "Срок истёк",
        "instruction_notice": (
            "Это уведомление для руководителя: отвечать на него не обязательно. Ответ на это "
            "письмо попадёт в карточку обращения."
        ),
        "customer_language": "Язык клиента",
        "answer_in": (
            "Клиент пишет на языке: {language}. Пожалуйста, ответьте на этом языке: "
            "ваш ответ мы передадим клиенту."
        ),
        "flags": "Внимание",
        "flag_vip": "VIP-клиент",
        "flag_legal_threat": "клиент упоминает суд или надзорный орган",
        "signature": "С уважением,\nслужба поддержки клиентов",
        "reply_subject_resolution": "Ответ по вашему обращению",
        "reply_subject_survey": "Оцените, пожалуйста, нашу работу",
        "reply_subject_default": "Ваше обращение",
    },
    "en": {
        "subject": "[{case_id}/{sr_id}] Customer request: {topic}{store}{priority}",
        "subject_store": " — store {store}",
        "greeting": "Hello,",
        "intro_external": (
            "A customer contacted our support with an issue that needs your attention. "
            "Please look into it and let us know the result."
        ),
        "intro_broadcast": (
            "We are receiving similar customer requests that may concern you as well. "
            "Please check the situation on your side and let us know the result."
        ),
        "case": "Case",
        "sub_request": "Request",
        "topic": "Topic",
        "store": "Store",
        "priority": "Priority",
        "due": "Please answer by",
        "span": "What the customer wrote",
        "details": "Details from the request",
        "full_text": "The customer's full message",
        "instruction": (
            "To answer, simply reply to this e-mail and say what was done: your answer goes "
            "straight into the case. Please keep the recipient address — it carries your "
            "request number. Customer data (card numbers, phones, e-mail addresses) is hidden."
        ),
        "answer_page": "Or answer on this page (no account needed): {url}",
        "subject_escalation": (
            "[{case_id}/{sr_id}] Deadline missed ({deadline}): {department}{priority}"
        ),
        "subject_alert": "[{case_id}/{sr_id}] Attention ({flags}): {department}{priority}",
        "intro_escalation": (
            "The {deadline} deadline of a customer request in the {department} department has "
            "passed. Please find out who is handling it and help close it as soon as possible."
        ),
        "intro_alert": (
            "A case needs your attention: {flags}. The request went to the {department} "
            "department; please make sure the customer is answered in time."
        ),
        "deadline_first_response": "first response",
        "deadline_resolution": "resolution",
        "missed": "Deadline missed",
        "instruction_notice": (
            "This is a notice for the supervisor: no answer is needed. A reply to this e-mail "
            "goes into the case."
        ),
        "customer_language": "Customer's language",
        "answer_in": (
            "The customer writes in {language}. Please answer in {language}: we pass your "
            "answer on to the customer."
        ),
        "flags": "Attention",
        "flag_vip": "VIP customer",
        "flag_legal_threat": "the customer mentions court or a regulator",
        "signature": "Kind regards,\nCustomer Support",
        "reply_subject_resolution": "Update on your request",
        "reply_subject_survey": "How did we do?",
        "reply_subject_default": "Your request",
    },
}

_ENTITY_LABELS: dict[str, dict[str, str]] = {
    "ru": {
        "order": "Номер заказа",
        "store": "Магазин",
        "loyalty_card": "Карта лояльности",
        "card": "Карта",
        "amount": "Сумма",
        "date": "Дата",
        "product": "Товар",
        "address": "Адрес",
        "phone": "Телефон",
        "email": "Эл. почта",
    },
    "en": {
        "order": "Order number",
        "store": "Store",
        "loyalty_card": "Loyalty card",
        "card": "Card",
        "amount": "Amount",
        "date": "Date",
        "product": "Product",
        "address": "Address",
        "phone": "Phone",
        "email": "E-mail",
    },
}

_SENSITIVE_ENTITY = {"loyalty_card", "card"}

#: Names of the customers' languages, in the language of the mail.
_LANGUAGE_NAMES: dict[str, dict[str, str]] = {
    "ru": {"ru": "русский", "en": "английский"},
    "en": {"ru": "Russian", "en": "English"},
}


def template_language(language: str) -> str:
    """``ru`` or ``en``: the languages with templates; others get English."""
    return language if language in _TEXT else "en"


def message_id_for(event_id: str, settings: Settings) -> str:
    """``<id@reply_domain>``: deterministic, so a resend carries the same Message-ID."""
    return f"<{_UNSAFE_ID.sub('_', event_id)}@{settings.reply_domain}>"


def _format_due(when: datetime, lang: str, zone: str | None = None) -> str:
    """The deadline in the department's timezone (named), else in UTC."""
    local = when.astimezone(ZoneInfo(zone)) if zone else when
    stamp = local.strftime("%d.%m.%Y %H:%M" if lang == "ru" else "%Y-%m-%d %H:%M")
    return f"{stamp} ({zone})" if zone else f"{stamp} UTC"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.strip().splitlines() or [""])


def _entity_value(entity: Entity) -> str:
    if entity.kind in _SENSITIVE_ENTITY and sum(ch.isdigit() for ch in entity.value) >= 8:
        return mask_card(entity.value)
    return redact(entity.value)


def _store(sub_request: SubRequest) -> str | None:
    for entity in sub_request.entities:
        if entity.kind == "store":
            return entity.value
    return None


def _new_message(body: str, lang: str) -> EmailMessage:
    # No header folding below RFC 5322's hard limit: CPython's folder drops the spaces
    # between adjacent encoded words of long Cyrillic subjects ("Запроспообращению").
    msg = EmailMessage(policy=email.policy.default.clone(max_line_length=998))
    # base64 keeps non-ASCII bodies 7-bit clean for any relay; English stays readable 7bit
    msg.set_content(body, charset="utf-8", cte=None if body.isascii() else "base64")
    msg["Content-Language"] = lang
    return msg


def compose_external(sub_request: SubRequest, settings: Settings) -> EmailMessage:
    """The e-mail asking an external party (store director, partner) to handle a sub-request."""
    if sub_request.kind not in (SubRequestKind.external, SubRequestKind.broadcast):
        raise InvalidInput(
            f"sub-request {sub_request.sub_request_id} is {sub_request.kind.value}, not e-mailed",
            field="kind",
        )
    if not sub_request.recipient:
        raise InvalidInput(
            f"sub-request {sub_request.sub_request_id} has no recipient", field="recipient"
        )
    lang = template_language(sub_request.language)
    t = _TEXT[lang]
    labels = _ENTITY_LABELS[lang]
    store = _store(sub_request)
    purpose = sub_request.purpose
    flag_names = ", ".join(t.get(f"flag_{f}", f) for f in sub_request.flags)
    deadline = t.get(f"deadline_{sub_request.breached_deadline}", "")
    if purpose == "escalation":
        intro = t["intro_escalation"].format(deadline=deadline, department=sub_request.department)
    elif purpose == "alert":
        intro = t["intro_alert"].format(flags=flag_names, department=sub_request.department)
    else:
        broadcast = sub_request.kind == SubRequestKind.broadcast
        intro = t["intro_broadcast" if broadcast else "intro_external"]
    lines = [
        t["greeting"],
        "",
        intro,
        "",
        f"{t['case']}: {sub_request.case_id}",
        f"{t['sub_request']}: {sub_request.sub_request_id}",
        f"{t['topic']}: {sub_request.category} / {sub_request.intent}",
    ]
    if store:
        lines.append(f"{t['store']}: {store}")
    lines.append(
        f"{t['priority']}: {sub_request.priority.level} ({sub_request.priority.score:.0f}/100)"
    )
    if sub_request.sla_due_at is not None:
        label = t["missed"] if purpose == "escalation" else t["due"]
        lines.append(f"{label}: {_format_due(sub_request.sla_due_at, lang, sub_request.timezone)}")
    customer_lang = sub_request.customer_language
    lang_name = _LANGUAGE_NAMES[lang].get(customer_lang or "", customer_lang or "")
    if lang_name:
        lines.append(f"{t['customer_language']}: {lang_name}")
    if sub_request.flags:
        lines.append(f"{t['flags']}: {flag_names}")
    span = redact(sub_request.text)
    lines += ["", f"{t['span']}:", _quote(span)]
    details = [e for e in sub_request.entities if e.kind != "store"]
    if details:
        lines += ["", f"{t['details']}:"]
        lines += [f"- {labels.get(e.kind, e.kind)}: {_entity_value(e)}" for e in details]
    if sub_request.full_text.strip() and sub_request.full_text.strip() != sub_request.text.strip():
        lines += ["", f"{t['full_text']}:", _quote(redact(sub_request.full_text))]
    if purpose != "request":
        lines += ["", t["instruction_notice"], "", t["signature"], ""]
        return _headers(_new_message("\n".join(lines), lang), sub_request, settings, t, store)
    lines += ["", t["instruction"]]
    page = responder_url(
        sub_request.sub_request_id, sub_request.case_id, sub_request.created_at, settings
    )
    if page:  # the console's signed answer page; whichever answer comes first resolves
        lines += ["", t["answer_page"].format(url=page)]
    if lang_name:
        lines += ["", t["answer_in"].format(language=lang_name)]
    lines += ["", t["signature"], ""]

    return _headers(_new_message("\n".join(lines), lang), sub_request, settings, t, store)


def _headers(
    msg: EmailMessage,
    sub_request: SubRequest,
    settings: Settings,
    t: dict[str, str],
    store: str | None,
) -> EmailMessage:
    subject = {"escalation": "subject_escalation", "alert": "subject_alert"}.get(
        sub_request.purpose, "subject"
    )
    msg["Subject"] = t[subject].format(
        case_id=sub_request.case_id,
        sr_id=sub_request.sub_request_id,
        topic=sub_request.category or sub_request.intent,
        store=t["subject_store"].format(store=store) if store else "",
        priority=f" [{sub_request.priority.level}]",
        deadline=t.get(f"deadline_{sub_request.breached_deadline}", ""),
        department=sub_request.department,
        flags=", ".join(t.get(f"flag_{f}", f) for f in sub_request.flags),
    )
    msg["From"] = settings.mail_from
    msg["To"] = sub_request.recipient
    msg["Reply-To"] = reply_address(sub_request.sub_request_id, sub_request.case_id, settings)
    msg["Message-ID"] = message_id_for(sub_request.sub_request_id, settings)
    msg["Date"] = email.utils.format_datetime(sub_request.created_at)
    msg["X-Care-Case-Id"] = sub_request.case_id
    msg["X-Care-Sub-Request-Id"] = sub_request.sub_request_id
    return msg


def _reply_subject(reply: Reply, lang: str) -> str:
    original = reply.reply_to.get("subject", "").strip()
    if original:
        return original if original.lower().startswith(("re:", "на:")) else f"Re: {original}"
    t = _TEXT[lang]
    key = {
        ReplyKind.resolution: "reply_subject_resolution",
        ReplyKind.survey: "reply_subject_survey",
    }.get(reply.kind, "reply_subject_default")
    ref = f" [{reply.case_id}]" if reply.case_id else ""
    return f"{t[key]}{ref}"


def _msgid(value: str) -> str:
    value = value.strip()
    return value if value.startswith("<") else f"<{value}>"


def compose_reply_email(reply: Reply, settings: Settings) -> EmailMessage:
    """The e-mail answering a customer who wrote by e-mail or web form, threaded.

    ``reply.reply_to`` keys: ``address`` (or ``email``) — the recipient; ``message_id``
    (or ``in_reply_to``) — the customer's Message-ID, becomes ``In-Reply-To``;
    ``references`` — space-separated earlier ids, extended with ``In-Reply-To``;
    ``subject`` — the customer's subject, answered as ``Re: …``.
    """
    to = (reply.reply_to.get("address") or reply.reply_to.get("email") or "").strip()
    if not to:
        raise InvalidInput(f"reply {reply.reply_id} has no e-mail address", field="reply_to")
    lang = template_language(reply.language)
    body = reply.text.rstrip()
    if reply.link and reply.link not in body:
        body = f"{body}\n\n{reply.link}"
    msg = _new_message(body + "\n", lang)
    msg["Subject"] = _reply_subject(reply, lang)
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Message-ID"] = message_id_for(reply.reply_id, settings)
    msg["Date"] = email.utils.format_datetime(reply.created_at)
    parent = reply.reply_to.get("message_id") or reply.reply_to.get("in_reply_to")
    refs = [_msgid(r) for r in reply.reply_to.get("references", "").split() if r.strip()]
    if parent:
        parent = _msgid(parent)
        msg["In-Reply-To"] = parent
        if parent not in refs:
            refs.append(parent)
    if refs:
        msg["References"] = " ".join(refs)
    if reply.case_id:
        msg["X-Care-Case-Id"] = reply.case_id
    return msg
