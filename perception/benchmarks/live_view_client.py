"""A Foxglove WebSocket client that subscribes to every channel and counts what arrives: the load
a person watching everything puts on the live view, for measuring what the view costs.

    python -m perception.benchmarks.live_view_client PORT [--seconds S]

Connects as soon as the port listens (retrying), subscribes to each channel of every `advertise`,
and reads until the server closes or `--seconds` pass; prints messages and bytes per channel.
Needs the `websockets` package (the `dev` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time

MESSAGE_DATA = 0x01  # Foxglove WebSocket protocol: binary opcode of a message on a subscription


async def watch(port: int, seconds: float, host: str = "127.0.0.1") -> dict[str, tuple[int, int]]:
    """{channel: (messages, bytes)} received until the server closes or `seconds` pass."""
    import websockets

    deadline = time.monotonic() + seconds
    while True:
        try:
            socket = await websockets.connect(f"ws://{host}:{port}", subprotocols=["foxglove.sdk.v1"], max_size=None)
            break
        except (OSError, websockets.exceptions.InvalidHandshake):
            if time.monotonic() > deadline:
                return {}
            await asyncio.sleep(0.05)
    channels: dict[int, str] = {}
    received: dict[str, tuple[int, int]] = {}
    try:
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(socket.recv(), deadline - time.monotonic())
            if isinstance(data, str):
                await _subscribe(socket, json.loads(data), channels)
            elif data[0] == MESSAGE_DATA:
                name = channels[struct.unpack_from("<I", data, 1)[0]]
                count, size = received.get(name, (0, 0))
                received[name] = (count + 1, size + len(data))
    except (websockets.exceptions.ConnectionClosed, asyncio.TimeoutError):
        pass
    return received


async def _subscribe(socket, message: dict, channels: dict[int, str]) -> None:  # noqa: ANN001 - a websockets connection
    if message.get("op") != "advertise":
        return
    subscriptions = []
    for channel in message["channels"]:
        subscription = len(channels) + 1
        channels[subscription] = channel["topic"]
        subscriptions.append({"id": subscription, "channelId": channel["id"]})
    await socket.send(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perception.benchmarks.live_view_client",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    received = asyncio.run(watch(args.port, args.seconds, args.host))
    for name, (count, size) in sorted(received.items()):
        print(f"{name:<22} {count:>6} messages {size / 1e3:>9.1f} kB")
    return 0 if received else 1


if __name__ == "__main__":
    raise SystemExit(main())
