"""Open a local HTML page in headless Chromium and report what a reader would meet.

Chromium is driven over the DevTools protocol through a pipe (--remote-debugging-pipe: commands
on file descriptor 3, replies on 4, each a JSON message ended by a NUL byte), so no port is opened.
The check collects console errors and uncaught exceptions, waits for every image and audio element
to load, starts each audio element and waits for it to play, and saves a screenshot of the page.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# JavaScript run in the page: each image's load state, each audio element's metadata, then whether it plays.
MEDIA_CHECK = """
(async () => {
  const wait = (element, events, ready, limit) => new Promise(resolve => {
    if (ready()) { resolve(true); return; }
    const timer = setTimeout(() => resolve(false), limit);
    for (const name of events) element.addEventListener(name, () => { clearTimeout(timer); resolve(ready()); },
                                                        {once: true});
  });
  const images = [];
  for (const image of document.images) {
    await wait(image, ['load', 'error'], () => image.complete, 20000);
    images.push({alt: image.alt, loaded: image.complete && image.naturalWidth > 0, width: image.naturalWidth});
  }
  const clips = [];
  for (const audio of document.querySelectorAll('audio')) {
    const loaded = await wait(audio, ['loadedmetadata', 'error'], () => audio.readyState >= 1 && !audio.error, 20000);
    let played = false, problem = audio.error ? `media error ${audio.error.code}` : null;
    if (loaded) {
      audio.muted = true;
      try {
        await audio.play();
        played = await wait(audio, ['timeupdate'], () => audio.currentTime > 0, 10000);
      } catch (error) { problem = String(error); }
      audio.pause();
      audio.currentTime = 0;
      audio.muted = false;
    }
    clips.push({loaded, played, duration: audio.duration, problem});
  }
  return {images, clips, height: document.documentElement.scrollHeight};
})()
"""


class BrowserError(RuntimeError):
    """Chromium failed to start, or did not reply in time."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    images: list[dict]
    clips: list[dict]
    height: int
    errors: list[str] = field(default_factory=list)


class Chromium:
    """A headless Chromium process and one page in it."""

    def __init__(self, executable: str, timeout: float = 120.0):
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="surfsep-chromium-")
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()

        def place_pipes() -> None:
            # Move both ends above 4 first, so that placing one cannot overwrite the other. The copies
            # at 3 and 4 are inheritable and survive exec, while every other descriptor Python opened does not.
            high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.process = subprocess.Popen(
            # Containers often run as root with a small /dev/shm: no sandbox, and shared memory in /tmp.
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--mute-audio", "--autoplay-policy=no-user-gesture-required", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=place_pipes)
        os.close(commands_read)
        os.close(replies_write)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise BrowserError(f"Chromium timed out: no reply within {self.timeout:.0f} s")
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed its pipe (exit status {self.process.poll()})")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def wait_for_event(self, method: str) -> dict:
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            event = self.receive()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def open(self, url: str, width: int) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=self.session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=self.session)
        self.send("Page.navigate", {"url": url}, session=self.session)
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                           session=self.session)
        if "exceptionDetails" in result:
            raise BrowserError(f"the check script failed in the page: {result['exceptionDetails']}")
        return result["result"]["value"]

    def screenshot(self, path: Path, height: int, width: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=self.session)
        picture = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=self.session)
        Path(path).write_bytes(base64.b64decode(picture["data"]))

    def errors(self) -> list[str]:
        """Return the console errors, uncaught exceptions and error log entries the page produced so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(arg.get("value", arg.get("description")))
                                                    for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.commands)
        os.close(self.replies)
        self.profile.cleanup()


def check_page(page: Path, screenshot: Path, executable: str, width: int = 1280,
               max_screenshot_height: int = 12000) -> PageCheck:
    """Load ``page`` from its file, check its media and console, and save a screenshot of up to the given height."""
    browser = Chromium(executable)
    try:
        browser.open(Path(page).resolve().as_uri(), width)
        found = browser.evaluate(MEDIA_CHECK)
        browser.screenshot(screenshot, min(found["height"], max_screenshot_height), width)
        return PageCheck(images=found["images"], clips=found["clips"], height=found["height"],
                         errors=browser.errors())
    finally:
        browser.close()
