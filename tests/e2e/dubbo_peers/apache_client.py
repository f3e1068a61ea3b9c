"""Drive Apache's Python Dubbo client (PyPI ``python-dubbo-support-python3``) against a provider.

Usage: apache_client.py PORT IDLE SECONDS. Shortens the client's idle time before it
heartbeats (60 s upstream) to IDLE, makes one call, stays connected for SECONDS and prints
JSON lines: the call's outcome, then the client's count of unanswered heartbeats.
"""

from __future__ import annotations

import json
import sys
import time

import dubbo.connection.connections as connections  # type: ignore[import-not-found]

port, idle, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
connections.TIMEOUT_IDLE = idle

from dubbo.client import DubboClient  # type: ignore[import-not-found]  # noqa: E402
from dubbo.common.exceptions import (  # type: ignore[import-not-found]  # noqa: E402
    DubboResponseException,
)

client = DubboClient("com.example.Echo", host=f"127.0.0.1:{port}")
try:
    outcome = {"call": "ok", "result": client.call("echo", "hi", timeout=2)}
except DubboResponseException as exc:
    outcome = {"call": "error", "error": str(exc).strip()}
except Exception as exc:  # a timeout, when nobody answers
    outcome = {"call": "failed", "error": repr(exc)}
print(json.dumps(outcome), flush=True)
time.sleep(seconds)
unanswered = dict(connections.connection_pool.client_heartbeats)
print(json.dumps({"done": True, "unanswered": unanswered}), flush=True)
