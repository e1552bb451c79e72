"""A headless chromium driven over the DevTools pipe, for the report tests: opens a page with the
network cut off and returns what it saw (console messages, requests, the rendered rows, a screenshot)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium/chromium-browser binary on PATH (Debian: apt-get install -y chromium)")
    return binary


class _DevTools:
    """Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, JSON messages ended by NUL).

    Why the protocol rather than scraping `--enable-logging` output: it reports each console message
    with its level, each uncaught exception, each browser log entry (CSP violations, failed loads)
    and each network request as structured events, so the test can tell an error from a log line and
    see a request even when it fails. It needs only the standard library."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: put the pipe ends on fds 3 and 4 (via high fds, no clash)
            high_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                # Any request would fail: no name resolves and the proxy is the discard port.
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "about:blank"]
        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=wire_fds,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_id = 0
        self.session: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._events.put(json.loads(message))

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30,
             log: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile go to `log`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._next_id, timeout, log)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait(self, match: Any, timeout: float, log: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self._events.get(timeout=max(0.01, deadline - time.monotonic()))
            if match(message):
                return message
            if log is not None and "method" in message:
                log.append(message)

    def drain(self, seconds: float, log: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                log.append(self._events.get(timeout=left))
            except queue.Empty:
                return

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # the browser may already be gone; it is killed below either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)


def open_in_chromium(page: Path, profile: Path, width: int = 1280, height: int = 2000) -> dict[str, Any]:
    """Load `page` headless; return its DOM, errors, network requests, image status and a PNG screenshot."""
    browser = _DevTools(_chromium(), profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        browser.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        events: list[dict[str, Any]] = []
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", log=events)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, log=events)
        browser.send("Page.navigate", {"url": page.as_uri()}, log=events)
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired", 30, events)
        browser.drain(0.5, events)  # late errors and requests

        def evaluate(expression: str) -> Any:
            return browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                log=events)["result"]["value"]

        dom = evaluate("document.documentElement.outerHTML")
        images = evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, log=events)["data"])
    finally:
        browser.close()
    sent = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
            if e.get("method") == "Network.requestWillBeSent"}
    return {"dom": dom, "images": images, "screenshot": shot, "errors": _errors(events),
            "requests": [url for url in sent.values() if not url.startswith("data:")],
            # url -> why it failed ("csp" when the page's policy stopped it before it left)
            "failed": {sent.get(e["params"]["requestId"]): e["params"].get("blockedReason") or e["params"]["errorText"]
                       for e in events if e.get("method") == "Network.loadingFailed"}}


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Uncaught exceptions, console.error/assert calls, and error-level browser log entries."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]  # text is "Uncaught"; the message is in the exception
            errors.append(f"exception: {details.get('text', '')} {details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append("log: " + params["entry"].get("text", ""))
    return errors
