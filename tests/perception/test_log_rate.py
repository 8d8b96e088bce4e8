"""A client that is not authenticated cannot flood a node's log (issue 16 item 9: the live view wrote a
`viewer ERROR` line for every bad message a WebSocket client sent, without limit)."""

import asyncio
import io
import logging

import pytest

from perception.log_rate import limit_log_rate


@pytest.fixture
def log_lines():
    """Lines written through a handler on the root logger, as a node's configure_logging sets up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield handler, lambda: stream.getvalue().splitlines()
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_noisy_logger_is_capped_its_neighbours_are_not_and_the_held_back_lines_are_counted(log_lines):
    handler, lines = log_lines
    limit = limit_log_rate("foxglove", burst=3, period_s=60)
    noisy = logging.getLogger("foxglove.websocket.connected_client")
    for i in range(100):
        noisy.error("Invalid message %d", i)
        logging.getLogger("foxglovers").error("not the SDK %d", i)  # a name that merely starts alike
    logging.getLogger("viewer").error("the node's own line")
    written = lines()
    assert [line for line in written if line.startswith("Invalid")] == [f"Invalid message {i}" for i in range(3)]
    assert sum(line.startswith("not the SDK") for line in written) == 100 and "the node's own line" in written
    assert limit.suppressed == 97
    limit._window_start -= 60  # the next window: one more line, saying what was held back
    noisy.error("Invalid message again")
    assert lines()[-1] == "Invalid message again (97 more such lines were held back)"
    limit.remove()


def test_garbage_from_a_live_view_client_writes_a_few_lines_not_one_per_message(log_lines):
    foxglove = pytest.importorskip("foxglove")
    websockets = pytest.importorskip("websockets")
    _, lines = log_lines
    foxglove.set_log_level("WARNING")
    limit = limit_log_rate("foxglove", burst=5, period_s=60)
    server = foxglove.start_server(name="test", host="127.0.0.1", port=0, context=foxglove.Context())

    async def hostile_client() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}", subprotocols=["foxglove.sdk.v1"], close_timeout=0.5) as ws:
            for _ in range(100):
                await ws.send("garbage{")
                await ws.send(b"\x99\x00\x01")
            await asyncio.sleep(0.5)

    try:
        asyncio.run(hostile_client())
    finally:
        server.stop()
        limit.remove()
    assert sum("Invalid message" in line for line in lines()) == 5
    assert limit.suppressed >= 150  # the server logged them; nearly all were held back
