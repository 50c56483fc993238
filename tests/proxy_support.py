"""A private tinyproxy on loopback for the HTTP-proxy tests, and commands run
with a controlled proxy environment."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.logcheck import no_traceback
from tests.support import BIN, TIMEOUT, Process, free_port

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY", "LINCHPIN_PROXY_PASSWORD")


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any proxy setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(settings)
    return env


def command(name, *args, env=None, stdin=None, check=True, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """``lmconnector``/``lmdevice`` with exactly the proxy environment given."""
    done = subprocess.run([os.path.join(BIN, name), *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout, env=env if env is not None else environment())
    no_traceback(f"{name} {args}", done.stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"{name} {args} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done


class TinyProxy(Process):
    """tinyproxy on 127.0.0.1 with its own configuration; it logs to our pipe.

    ``connect_ports`` are the only ports CONNECT may reach (others get 403);
    ``basic_auth=(user, password)`` makes it answer 407 without them.
    """

    def __init__(self, folder, connect_ports=(), basic_auth=None, port=None):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", "LogLevel Info", "MaxClients 64",
                 "Allow 127.0.0.1", "DisableViaHeader Yes"]
        lines += [f"ConnectPort {p}" for p in connect_ports]
        if basic_auth:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        conf = folder / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        binary = shutil.which("tinyproxy") or "/usr/sbin/tinyproxy"
        super().__init__([binary, "-d", "-c", str(conf)])
        self.wait_for(r"Accepting connections")
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[str] = []

    def requests(self, at_least: int) -> list[str]:
        """The request lines the proxy logged (``CONNECT host:port HTTP/1.1``, ...), once it
        has logged at least ``at_least`` (its log is read on a thread: wait for them)."""
        while len(self.seen) < at_least:
            self.seen.append(self.wait_for(r"Request \(file descriptor \d+\): (.*)").group(1).strip())
        return self.seen
