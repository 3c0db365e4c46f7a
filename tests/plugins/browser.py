"""Headless Chromium driven through chromedriver's W3C WebDriver HTTP API (no extra package).

``browser`` (session fixture) starts Debian's ``chromedriver`` on a free port and one
Chromium session with a fresh profile; tests that need it skip, naming the reason, only when
the binaries are missing (``scripts/test.sh`` installs them). Screenshots go to
``tmp/screenshots/`` in the checkout (ignored by git) or ``$CONSOLE_SCREENSHOT_DIR``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # W3C WebDriver element key
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]
ROOT = Path(__file__).resolve().parents[2]


class WebDriverError(AssertionError):
    """The driver refused a command (no such element, timeout, ...)."""


class Browser:
    """One WebDriver session: the handful of commands the console tests use."""

    def __init__(self, base: str, session_id: str) -> None:
        self.base = f"{base}/session/{session_id}"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as exc:
            raise WebDriverError(f"{method} {path}: {exc.read().decode()[:300]}") from exc

    def get(self, url: str) -> None:
        """Open a URL."""
        self._call("POST", "/url", {"url": url})

    def forget_cookies(self) -> None:
        """Delete every cookie (a new visitor: logged out, a fresh session)."""
        self._call("DELETE", "/cookie")

    def url(self) -> str:
        """The current URL."""
        return str(self._call("GET", "/url"))

    def find(self, css: str) -> str:
        """The first element matching ``css`` (WebDriverError if none)."""
        try:
            found = self._call("POST", "/element", {"using": "css selector", "value": css})
        except WebDriverError as exc:
            page = self._call(
                "POST", "/execute/sync", {"script": "return document.body.innerText", "args": []}
            )
            raise WebDriverError(f"no {css!r} on {self.url()}: {str(page)[:500]!r}") from exc
        return str(found[ELEMENT])

    def find_all(self, css: str) -> list[str]:
        """Every element matching ``css``."""
        found = self._call("POST", "/elements", {"using": "css selector", "value": css})
        return [str(e[ELEMENT]) for e in found]

    def text(self, css: str) -> str:
        """Rendered text of the first element matching ``css``."""
        return str(self._call("GET", f"/element/{self.find(css)}/text"))

    def type(self, css: str, text: str) -> None:
        """Type into a field."""
        self._call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        """Click an element."""
        self._call("POST", f"/element/{self.find(css)}/click", {})

    def source(self) -> str:
        """The page's current DOM as HTML."""
        return str(self._call("GET", "/source"))

    def run(self, script: str, *args: Any) -> Any:
        """Run JavaScript in the page and return its result."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the whole page (the window grows to its height); returns its path."""
        height = int(self.run("return document.documentElement.scrollHeight"))
        self._call("POST", "/window/rect", {"width": 1400, "height": min(max(height, 600), 8000)})
        out = Path(os.environ.get("CONSOLE_SCREENSHOT_DIR") or ROOT / "tmp" / "screenshots")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.png"
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        self._call("POST", "/window/rect", {"width": 1400, "height": 1000})
        return path

    def open_until(self, url: str, css: str, *, timeout_s: float = 120.0) -> None:
        """Open ``url`` again until the page has an element matching ``css`` (a page that
        does not exist yet in the read model is a plain 404 without live updates)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.get(url)
            if self.find_all(css):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} never showed {css!r}: {self.source()[:300]}")
            time.sleep(0.5)

    def wait_for(self, css: str, *, contains: str = "", timeout_s: float = 120.0) -> str:
        """Text of the first element matching ``css`` once it exists (and holds ``contains``).

        Waits without reloading: the page's own live updates must bring it.
        """
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                last = self.text(css)
                if contains in last:
                    return last
            except WebDriverError:
                pass
            time.sleep(0.5)
        raise AssertionError(
            f"{css!r} with {contains!r} not shown within {timeout_s:.0f} s: {last!r}"
        )


def _chromium() -> tuple[str, str] | None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A headless Chromium session (skips, saying why, without chromium + chromedriver)."""
    found = _chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (scripts/test.sh installs them)")
    chrome, driver = found
    port = free_port()
    proc = subprocess.Popen(
        [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    profile = tempfile.mkdtemp(prefix="console-chrome-")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/status", timeout=5) as resp:
                    if json.loads(resp.read())["value"]["ready"]:
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("chromedriver did not start")
            time.sleep(0.2)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chrome,
                        "args": [*CHROME_FLAGS, f"--user-data-dir={profile}"],
                    },
                }
            }
        }
        req = urllib.request.Request(
            f"{base}/session", data=json.dumps(caps).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as resp:
            session_id = json.loads(resp.read())["value"]["sessionId"]
        b = Browser(base, session_id)
        try:
            yield b
        finally:
            b._call("DELETE", "")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
