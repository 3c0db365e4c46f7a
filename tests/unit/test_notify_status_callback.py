"""Where the notify stage asks Twilio to report an SMS's status."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.notify.channels import twilio_status_callback


def test_callback_points_at_the_public_ingest_url_with_the_reply_id() -> None:
    settings = Settings(
        public_base_url="https://router.example.com/",
        twilio_api_base_url="https://api.twilio.com",
    )
    assert (
        twilio_status_callback(settings, "rep_1 2")
        == "https://router.example.com/webhooks/twilio?delivery_id=rep_1+2"
    )


def test_no_callback_the_real_twilio_could_not_reach() -> None:
    real = Settings(
        public_base_url="http://127.0.0.1:8080", twilio_api_base_url="https://api.twilio.com"
    )
    assert twilio_status_callback(real, "rep_1") is None
    local = Settings(
        public_base_url="http://localhost:8080", twilio_api_base_url="http://127.0.0.1:9"
    )
    assert (
        twilio_status_callback(local, "rep_1")
        == "http://localhost:8080/webhooks/twilio?delivery_id=rep_1"
    )
