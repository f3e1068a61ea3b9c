"""The pure, transport-agnostic core of pulse.

Rules this package keeps:

* no I/O, no clock reads, no sleeping: time is always an argument (``now: float``);
* no imports of trio, socket, time, asyncio or structlog;
* every machine consumes events and returns actions, and answers ``next_deadline()`` so a
  driver can sleep exactly until the next thing to do.
"""
