"""The floor of an HTTP round trip as the benchmarks measure it: an aiohttp server (on
uvloop, as Hodei's gateway runs) that answers each POST with its body and does nothing
else. bench/warm.py times its own client against it beside the Hodei calls, so that its
figures say how much of a call is Hodei's and how much is the client's and the loopback's.

Run: python bench/lib/echo_http.py PORT
"""

from __future__ import annotations

import sys

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/echo", echo)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is in the bench extra
        loop_factory = None
    import asyncio

    loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
