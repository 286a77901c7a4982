"""The CLI's exit codes (documented in ``hodei --help`` and the README)."""

from __future__ import annotations

import enum

EXIT_CODES = """\
  0  done (the invocation succeeded)
  1  the function did not succeed (failed, timed out, cancelled)
  2  usage: bad arguments, a spec file that is not JSON, a local file that cannot be read
  3  the gateway cannot be reached, or what answers is not a Hodei gateway
  4  stopped waiting: the invocation is still queued or running (the wait ran out, or
     the gateway is shutting down)
  5  the gateway refused the request (not found, invalid spec, forbidden...): its error
     code and message are printed
  130  interrupted (Ctrl-C): an invocation it was waiting for goes on
"""


class Exit(enum.IntEnum):
    OK = 0
    FUNCTION_FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    STILL_RUNNING = 4
    REFUSED = 5
    INTERRUPTED = 130
