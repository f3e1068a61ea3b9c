"""Run the Dubbo provider of PyPI ``dubbo-py`` on 127.0.0.1 (no services, heartbeats only).

Usage: feiyuw_provider.py SECONDS. Prints the bound port, serves for SECONDS, exits. Built
from the package's server classes directly so that it binds loopback only.
"""

from __future__ import annotations

import sys
import time

from dubbo.server import (  # type: ignore[import-not-found]
    _DubboServer,
    _get_dubbo_request_handler,
    _ServerThread,
)

server = _DubboServer(("127.0.0.1", 0), _get_dubbo_request_handler({}))
_ServerThread(server).start()
print(server.server_address[1], flush=True)
time.sleep(float(sys.argv[1]))
