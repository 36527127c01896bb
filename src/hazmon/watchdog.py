"""systemd integration: ``READY=1`` once the API answers, then ``WATCHDOG=1`` while ``/healthz`` answers.

Under a unit with ``Type=notify`` and ``WatchdogSec=`` (deploy/systemd/hazmon.service), systemd sets
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``. A thread — not a task, so that a blocked event loop stops the
pings — asks the process's own ``/healthz`` every half watchdog interval and pings while it answers
with any status: a degraded plant (a PLC down: 503) is for alarms and load balancers, a process that
no longer answers is for systemd to restart. Without ``NOTIFY_SOCKET`` nothing is started.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.error
import urllib.request

log = logging.getLogger("hazmon.watchdog")


def notify(message: str, sock_path: str | None = None) -> bool:
    """Send one sd_notify datagram; False when not under systemd or the send fails."""
    path = sock_path or os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify %r failed: %s", message, e)
        return False
    return True


def answers(url: str, timeout_s: float) -> bool:
    """True when the URL answers with any HTTP status within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True  # 503 degraded: the process is alive and says what is wrong
    except (OSError, ValueError):
        return False


class Watchdog:
    def __init__(self, health_url: str, interval_s: float, sock_path: str | None = None) -> None:
        self.health_url = health_url
        self.interval_s = interval_s
        self.sock_path = sock_path
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hazmon-watchdog", daemon=True)
        self._ready = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        notify("STOPPING=1", self.sock_path)
        self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if answers(self.health_url, timeout_s=max(1.0, self.interval_s / 2)):
                if not self._ready:
                    self._ready = notify("READY=1", self.sock_path)
                if notify("WATCHDOG=1", self.sock_path):
                    self.pings += 1
            else:
                log.warning("watchdog: %s does not answer; not pinging systemd", self.health_url)
            self._stop.wait(self.interval_s)


def from_environment(host: str, port: int) -> Watchdog | None:
    """A started watchdog when systemd asked for one (NOTIFY_SOCKET), else None."""
    sock = os.environ.get("NOTIFY_SOCKET")
    if not sock:
        return None
    usec = os.environ.get("WATCHDOG_USEC", "")
    interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 5.0
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    dog = Watchdog(f"http://{probe_host}:{port}/healthz", interval, sock)
    dog.start()
    return dog
