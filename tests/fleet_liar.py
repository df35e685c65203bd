"""A liar on the LAN: says it is fetching a commit (so pulls of it count on it for a share), and
answers every object asked of it with garbage (``garbage``), or says it holds none of them, ever
(``silent``: it claims to fetch but never does).

    python -m tests.fleet_liar PORT COMMIT garbage|silent
"""

from __future__ import annotations

import os
import sys

from aiohttp import web

from lanshare import wire

NODE_IDS = {"garbage": "11111111111111111111111111111111", "silent": "22222222222222222222222222222222"}


def app(commit: str, mode: str) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "protocol": wire.VERSION,
                "node_id": NODE_IDS[mode],
                "refs": {},
                "commits": {},
                "fetching": [commit],
            }
        )

    async def objects(request: web.Request) -> web.StreamResponse:
        names = wire.parse_request(await request.json())
        response = web.StreamResponse(headers={"Content-Type": wire.BATCH_CONTENT_TYPE})
        await response.prepare(request)
        compressor = wire.compressor().compressobj()
        await response.write(compressor.compress(wire.MAGIC))
        for name in names:
            if mode == "garbage":
                record = wire.encode_record(name, os.urandom(300))
            else:
                record = wire.encode_record(name, None, wire.ABSENT)
            await response.write(compressor.compress(record))
        await response.write(compressor.compress(bytes([wire.END])) + compressor.flush())
        await response.write_eof()
        return response

    application = web.Application()
    application.add_routes(
        [web.get(wire.API_PREFIX + "/info", info), web.post(wire.API_PREFIX + "/objects", objects)]
    )
    return application


if __name__ == "__main__":
    web.run_app(app(sys.argv[2], sys.argv[3]), host="0.0.0.0", port=int(sys.argv[1]), print=None)
