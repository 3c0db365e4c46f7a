"""Twilio request signatures against Twilio's own published test vectors.

Sources (read at the commits named, test files of Twilio's SDKs):

* twilio-python ``tests/unit/test_request_validator.py`` (306691e7):
  token ``12345``, URL ``https://mycompany.com/myapp.php?foo=1&bar=2``, the CallSid/Digits
  parameters, expected ``RSOYDt4T1cUTdK1PDd93/VVr8B8=``; with ``:443`` ``kvajT1Pt…``; http with
  ``:80`` ``0ZXoZLH…``; http with ``:1234`` ``Zmvh+3y…``; repeated ``Digits`` ``IK+Dwps…``;
  the JSON body with ``bodySHA256`` ``a9nBmqA0…``.
* twilio-node ``spec/validation.spec.js`` and ``spec/unit/webhooks/webhooks.spec.js``
  (45d3d65a): the same vectors plus URLs with credentials, an array parameter in either
  order, the empty-body hash, and the port/no-port round trips with token ``s3cr3t``.

A vector "the SDKs accept" is one their ``validateRequest`` / ``validate`` returns true for;
the ones they reject (wrong signature, a different URL) must be rejected here too.
"""

from __future__ import annotations

import pytest

from pipeline.ingest.channels import twilio_signature, twilio_signature_valid

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
REPEATED = [
    ("Sid", "CA123"),
    ("SidAccount", "AC123"),
    ("Digits", "5678"),
    ("Digits", "1234"),
    ("Digits", "1234"),
]
BODY = b'{"property": "value", "boolean": true}'
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
EMPTY_HASH = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ACCEPTED: list[tuple[str, str, list[tuple[str, str]], str, bytes | None]] = [
    # (name, url, params, signature, JSON body)
    ("python: compute/validate", URL, list(PARAMS.items()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=", None),
    (
        "python: removes port on https",
        URL.replace(".com", ".com:1234"),
        list(PARAMS.items()),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        None,
    ),
    (
        "python: http with port 1234",
        URL.replace(".com", ".com:1234").replace("https", "http"),
        list(PARAMS.items()),
        "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        None,
    ),
    (
        "python: adds port 443",
        URL,
        list(PARAMS.items()),
        "kvajT1Ptam85bY51eRf/AJRuM3w=",
        None,
    ),
    (
        "python: adds port 80",
        URL.replace("https", "http"),
        list(PARAMS.items()),
        "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        None,
    ),
    ("python: repeated values (MultiDict)", URL, REPEATED, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", None),
    (
        "python: JSON body hash",
        f"{URL}&bodySHA256={BODY_HASH}",
        [],
        "a9nBmqA0ju/hNViExpshrM61xv4=",
        BODY,
    ),
    (
        "node: empty JSON body hash",
        f"{URL}&bodySHA256={EMPTY_HASH}",
        [],
        "Ldidvp12m26NI7eqEvxnEpkd9Hc=",
        b"{}",
    ),
    (
        "node: only the bodySHA256 parameter",
        "https://mycompany.com/myapp.php?bodySHA256=" + BODY_HASH,
        [],
        "y77kIzt2vzLz71DgmJGsen2scGs=",
        BODY,
    ),
    (
        "node: credentials in the URL",
        "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2",
        list(PARAMS.items()),
        "CukzLTc1tT5dXEDIHm/tKBanW10=",
        None,
    ),
    (
        "node: username only",
        "https://user@mycompany.com/myapp.php?foo=1&bar=2",
        list(PARAMS.items()),
        "2YRLlVAflCqxaNicjMpJcSTgzSs=",
        None,
    ),
    (
        "node: credentials, adding port 443",
        "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2",
        list(PARAMS.items()),
        "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI=",
        None,
    ),
    (
        "node: special characters in the query",
        URL + "&Body=It's+amazing",
        list(PARAMS.items()),
        "TfZzewPq8wqrGlMfyAud8+/IvJ0=",
        None,
    ),
    (
        "node: array parameter",
        URL,
        [
            ("MessagingBinding.Address", "+1325xxxxxxx"),
            ("MessagingBinding.Address", "+1415xxxxxxx"),
        ],
        "83O6e2vORAoJHUNzJjDWN1jz+BA=",
        None,
    ),
    (
        "node: array parameter, other order",
        URL,
        [
            ("MessagingBinding.Address", "+1415xxxxxxx"),
            ("MessagingBinding.Address", "+1325xxxxxxx"),
        ],
        "83O6e2vORAoJHUNzJjDWN1jz+BA=",
        None,
    ),
    ("node: multiple params and values", URL, REPEATED, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", None),
]


@pytest.mark.parametrize(
    ("url", "params", "signature", "body"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_published_vectors_are_accepted(
    url: str, params: list[tuple[str, str]], signature: str, body: bytes | None
) -> None:
    assert twilio_signature_valid(TOKEN, url, params, signature, body=body)


def test_published_rejections_stay_rejected() -> None:
    assert not twilio_signature_valid(TOKEN, URL, PARAMS, "WRONG_SIGNATURE")
    # A body given without bodySHA256 in the URL: the params signature does not cover it.
    assert not twilio_signature_valid(
        TOKEN, URL + "&somethingUnexpected=true", PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )
    wrong_hash = f"{URL}&bodySHA256={BODY_HASH}"
    assert not twilio_signature_valid(
        TOKEN, wrong_hash, [], "a9nBmqA0ju/hNViExpshrM61xv4=", body=BODY + b" "
    )


# twilio-node spec/unit/webhooks/webhooks.spec.js: signature computed over one URL form,
# validated against another (token "s3cr3t", no parameters).
PORT_CASES = [
    ("https://example.com:443/path?test=param", "https://example.com:443/path?test=param", True),
    ("https://example.com:443/path?test=param", "https://example.com/path?test=param", True),
    ("https://example.com/path?test=param", "https://example.com/path?test=param", True),
    ("https://example.com/path?test=param", "https://example.com:443/path?test=param", True),
    ("https://example.com/path?test=param", "https://example.com/path?test=param2", False),
]


@pytest.mark.parametrize(("signed", "target", "valid"), PORT_CASES)
def test_port_round_trips(signed: str, target: str, valid: bool) -> None:
    signature = twilio_signature("s3cr3t", signed, {})
    assert twilio_signature_valid("s3cr3t", target, {}, signature) is valid


def test_repeated_values_count_once_each_sorted() -> None:
    # The algorithm the vectors pin: sorted names, each distinct value sorted.
    one = twilio_signature(TOKEN, URL, [("A", "2"), ("A", "1"), ("A", "1"), ("B", "x")])
    two = twilio_signature(TOKEN, URL, [("B", "x"), ("A", "1"), ("A", "2")])
    assert one == two
    assert one != twilio_signature(TOKEN, URL, [("A", "2"), ("B", "x")])


# twilio-node spec/unit/webhooks/webhooks.spec.js: a query with a single quote, signed
# escaped or not, validates against either form.
QUOTE_CASES = [
    (
        "https://example.com/path?test=param'WithQuote",
        "https://example.com/path?test=param'WithQuote",
    ),
    (
        "https://example.com/path?test=param'WithQuote",
        "https://example.com/path?test=param%27WithQuote",
    ),
    (
        "https://example.com/path?test=param%27WithQuote",
        "https://example.com/path?test=param'WithQuote",
    ),
    (
        "https://example.com/path?test=param%27WithQuote",
        "https://example.com/path?test=param%27WithQuote",
    ),
]


@pytest.mark.parametrize(("signed", "target"), QUOTE_CASES)
def test_quote_in_the_query_either_way(signed: str, target: str) -> None:
    signature = twilio_signature("s3cr3t", signed, {})
    assert twilio_signature_valid("s3cr3t", target, {}, signature)
