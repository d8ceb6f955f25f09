"""Two WebRTC peers (aiortc, a stack this project did not write) with a
relay-only ICE policy exchange data-channel messages through ucmrc's TURN.

    turn_peers.py URL SECRET [--resolve NAME=IP]

URL is an ICE server URL (turn:HOST:PORT?transport=udp, or
turns:NAME:PORT?transport=tcp); SECRET the REST shared secret, from which
short-lived credentials are issued as a PBX would. --resolve points a name
at an address in this process only (the test has no DNS). Prints one JSON
line: whether every message arrived each way, and the candidate types
offered (relay only).
Exits non-zero when anything is missing.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import socket
import sys
import time

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

MESSAGES = 20


def rest_credentials(secret: str, user: str) -> tuple[str, str]:
    username = f"{int(time.time()) + 3600}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def resolve_in_process(mapping: dict[str, str]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real(mapping.get(host, host), *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


async def run(url: str, secret: str) -> dict:
    peers = []
    for name in ("caller", "callee"):
        username, password = rest_credentials(secret, name)
        config = RTCConfiguration(
            iceServers=[RTCIceServer(urls=[url], username=username, credential=password)],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
        peers.append(RTCPeerConnection(configuration=config))
    caller, callee = peers
    received = {"caller": [], "callee": []}
    done = asyncio.Event()
    opened = asyncio.Event()

    def check_done():
        if len(received["caller"]) == MESSAGES and len(received["callee"]) == MESSAGES:
            done.set()

    channel = caller.createDataChannel("chat")

    @channel.on("open")
    def _on_open():
        opened.set()

    @channel.on("message")
    def _caller_got(message):
        received["caller"].append(message)
        check_done()

    @callee.on("datachannel")
    def _on_channel(remote):
        @remote.on("message")
        def _callee_got(message):
            received["callee"].append(message)
            remote.send(f"pong {message}")
            check_done()

    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)
    offered = [line for line in caller.localDescription.sdp.splitlines() if line.startswith("a=candidate")]
    await asyncio.wait_for(opened.wait(), 30)
    for i in range(MESSAGES):
        channel.send(f"ping {i} " + "x" * 200)
    await asyncio.wait_for(done.wait(), 30)
    result = {
        "sent": MESSAGES,
        "callee_received": received["callee"] == [f"ping {i} " + "x" * 200 for i in range(MESSAGES)],
        "caller_received": received["caller"] == [f"pong ping {i} " + "x" * 200 for i in range(MESSAGES)],
        "offered_candidate_types": sorted({line.split()[7] for line in offered}),
    }
    await caller.close()
    await callee.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("secret")
    parser.add_argument("--resolve", action="append", default=[])
    args = parser.parse_args()
    resolve_in_process(dict(item.split("=", 1) for item in args.resolve))
    result = asyncio.run(asyncio.wait_for(run(args.url, args.secret), 90))
    print(json.dumps(result))
    ok = result["callee_received"] and result["caller_received"] and result["offered_candidate_types"] == ["relay"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
