"""A small driver for an installed headless Chromium, over the Chrome DevTools Protocol on a pipe.

Used by the plugin's browser tests and to take screenshots of the reader page and the report. It starts the
system's ``chromium`` with ``--remote-debugging-pipe`` (the browser reads JSON commands on fd 3 and writes
answers and events on fd 4, each message ended by a NUL byte), so it needs no websocket library, no driver
binary and never downloads a browser. Written by hand: the maintained Python clients either download their own
browser build (which cannot work on an offline machine) or need a matching driver binary.

Example::

    with Chromium() as browser:
        page = browser.new_page()             # own browser context: own cookies
        page.goto("http://127.0.0.1:8765/")
        page.wait_for("document.body.dataset.ready")
        page.key("r"); page.key("4"); page.key("Enter")
        page.screenshot("reader.png")
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Chromium", "Page", "CDPError", "find_chromium"]

_KEYS = {
    "Enter": ("Enter", 13, "\r"),
    "ArrowUp": ("ArrowUp", 38, ""),
    "ArrowDown": ("ArrowDown", 40, ""),
    "ArrowLeft": ("ArrowLeft", 37, ""),
    "ArrowRight": ("ArrowRight", 39, ""),
}


class CDPError(RuntimeError):
    """The browser answered a command with an error, a script threw, or a wait timed out."""


def find_chromium() -> str | None:
    """Path of an installed Chromium/Chrome binary (``$CHROMIUM`` first), or None."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """A headless Chromium process driven through the DevTools protocol on a pipe."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError("no chromium binary found; install Debian's 'chromium' (.ci/setup.d/chromium.sh)")
        self.width, self.height, self.timeout = width, height, timeout
        self._profile = tempfile.mkdtemp(prefix="busgen-chromium-")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._results: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # move the child's ends above fd 4 so the dup2 to fds 3 and 4 below cannot clobber one another
        hi_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 64)
        hi_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 64)
        os.close(to_browser_r)
        os.close(from_browser_w)
        devnull = os.open(os.devnull, os.O_RDWR)
        args = [
            self.binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--mute-audio", "--hide-scrollbars", f"--window-size={width},{height}",
            "about:blank",
        ]
        try:
            self.pid = os.posix_spawn(self.binary, args, os.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2), (os.POSIX_SPAWN_DUP2, hi_r, 3),
                (os.POSIX_SPAWN_DUP2, hi_w, 4)], setsid=True)
        finally:
            for fd in (hi_r, hi_w, devnull):
                os.close(fd)
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", {"discover": True})

    # ------------------------------------------------------------------------------------------ protocol
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._results[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and wait for its answer; :class:`CDPError` on an error answer or timeout."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        with self._lock:
            os.write(self._to_browser, data)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while msg_id not in self._results:
                left = deadline - time.monotonic()
                if self._closed:
                    raise CDPError(f"{method}: the browser closed the connection")
                if left <= 0:
                    raise CDPError(f"{method}: no answer within {timeout or self.timeout} s")
                self._cond.wait(left)
            reply = self._results.pop(msg_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')} ({reply['error'].get('data', '')})")
        return reply.get("result", {})

    def new_page(self, isolated: bool = True) -> "Page":
        """A new tab; ``isolated`` gives it its own browser context (cookies, storage), like another user."""
        params: dict[str, Any] = {"url": "about:blank"}
        if isolated:
            params["browserContextId"] = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", params)["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session, target)

    def close(self) -> None:
        """Ask the browser to quit, then make sure it is gone and remove its profile."""
        if getattr(self, "pid", None) is None:
            return
        try:
            self.send("Browser.close", timeout=5)
        except (CDPError, OSError):
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
        self.pid = None
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate JavaScript, type, click, screenshot."""

    def __init__(self, browser: Chromium, session: str, target: str):
        self.browser, self.session, self.target = browser, session, target
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": browser.width, "height": browser.height, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def requested_urls(self) -> list[str]:
        """Every URL this tab asked for (Network.requestWillBeSent events)."""
        return [e["params"]["request"]["url"] for e in list(self.browser.events)
                if e.get("sessionId") == self.session and e.get("method") == "Network.requestWillBeSent"]

    def console_errors(self) -> list[str]:
        """Uncaught exceptions of this tab's scripts."""
        return [json.dumps(e["params"]["exceptionDetails"])[:500] for e in list(self.browser.events)
                if e.get("sessionId") == self.session and e.get("method") == "Runtime.exceptionThrown"]

    def eval(self, expression: str, await_promise: bool = True) -> Any:
        """Value of a JavaScript expression (promises awaited); :class:`CDPError` when it throws."""
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": await_promise,
                                             "returnByValue": True, "userGesture": True})
        if "exceptionDetails" in res:
            det = res["exceptionDetails"]
            text = det.get("exception", {}).get("description") or det.get("text")
            raise CDPError(f"script failed: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0, interval: float = 0.05) -> Any:
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.eval(expression)
            except CDPError:
                last = None
            if last:
                return last
            time.sleep(interval)
        raise CDPError(f"timed out after {timeout} s waiting for: {expression} (last value {last!r})")

    def goto(self, url: str, timeout: float = 15.0) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for(f"document.readyState === 'complete' && location.href.startsWith({json.dumps(url)})", timeout)

    def reload(self, timeout: float = 15.0) -> None:
        self.eval("window.__busgen_reload_marker = 1")
        self.send("Page.reload", {"ignoreCache": True})
        self.wait_for("document.readyState === 'complete' && !window.__busgen_reload_marker", timeout)

    def key(self, key: str) -> None:
        """Press and release one key: a printable character or Enter / arrow keys."""
        if key in _KEYS:
            name, code, text = _KEYS[key]
            base = {"key": name, "code": name, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        else:
            text = key
            code = ord(key.upper()) if key.isalnum() else ord(key)
            base = {"key": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown" if text else "rawKeyDown", **base,
                                             **({"text": text, "unmodifiedText": text} if text else {})})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})

    def type(self, text: str) -> None:
        """Insert text into the focused element."""
        self.send("Input.insertText", {"text": text})

    def click(self, selector: str) -> None:
        """Click the centre of the first element matching ``selector`` with real mouse events."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if not box:
            raise CDPError(f"no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        """PNG of the viewport (or the whole page) to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        path = Path(path)
        path.write_bytes(data)
        return path
