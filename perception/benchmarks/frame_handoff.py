"""Frame handoff latency between two processes: shared-memory ring vs ZeroMQ ipc.

    perception bench-handoff [--frames 500] [--json out.json]

Handoff = from the moment a frame is complete on the writer side to the moment the reader
holds a usable, validated frame. Cases, each at 640x480 and 1920x1080:
  shm           pixels decoded into the ring slot in place (as the capture node does), header over ipc
  shm+copy      the writer copies the frame into the ring first (sources that cannot decode in place)
  zmq-zerocopy  pixels as a zero-copy second ZeroMQ part (the `inline` transport, for tcp)
  zmq-copy      plain ZeroMQ: frame bytes copied into the message and out again on receipt
  zmq-floor     an 8-byte ZeroMQ message and nothing else: what waking a blocked reader through
                ZeroMQ costs on this machine, the floor under every other case
Frames are sent at 100 Hz so no case measures queueing behind its own backlog.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from perception.latency import now_ns, percentiles_ms
from perception.messages import FrameTransport, Stamp
from perception.shm_ring import FrameOverwritten
from perception.topics import FRAMES
from perception.transport import FrameReceiver, FrameSender, Publisher, Subscriber

RESOLUTIONS = {"640x480": (480, 640, 3), "1920x1080": (1080, 1920, 3)}
CASES = ("zmq-floor", "shm", "shm+copy", "zmq-zerocopy", "zmq-copy")
SEND_HZ = 100


def _reader(endpoint: str, case: str, frames: int, result_path: str, ready) -> None:
    context = zmq.Context()
    latencies = np.zeros(frames, np.int64)
    subscriber = Subscriber(context, endpoint, FRAMES, latest=False)
    receiver = FrameReceiver()
    ready.set()
    got = lost = 0
    while got < frames and subscriber.socket.poll(5000):
        if case in ("zmq-copy", "zmq-floor"):
            parts = subscriber.socket.recv_multipart()  # copies out of ZeroMQ's buffers
            np.frombuffer(parts[2], np.uint8)
            sent_ns = int.from_bytes(parts[1][:8], "little")
            latencies[got] = now_ns() - sent_ns
            got += 1
            continue
        for received in subscriber.receive():
            try:
                view = receiver.view(received)
            except FrameOverwritten:  # the reader fell behind (a busy machine): lost, counted, as a node does
                lost += 1
                continue
            if not view.still_valid():
                lost += 1
                continue
            latencies[got] = now_ns() - received.message.stamps[-1].t_ns
            got += 1
    np.save(result_path, np.append(latencies[:got], lost))  # the last value: frames lost
    receiver.close()
    subscriber.close()
    context.term()


def run_case(case: str, shape: tuple[int, int, int], frames: int, workdir: Path) -> dict:
    endpoint = f"ipc://{workdir}/handoff.pub"
    context = zmq.Context()
    publisher = Publisher(context, endpoint)
    transport = FrameTransport.INLINE if case == "zmq-zerocopy" else FrameTransport.SHM
    sender = FrameSender(publisher, workdir.name, f"bench{shape[0]}", transport, slots=8)
    result_path = str(workdir / f"{case}-{shape[0]}.npy")
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    reader = spawn.Process(target=_reader, args=(endpoint, case, frames, result_path, ready))
    reader.start()
    ready.wait(20)
    while publisher.subscriber_count(FRAMES) < 1:
        time.sleep(0.01)
    source = np.random.default_rng(0).integers(0, 255, shape, np.uint8)
    period = 1.0 / SEND_HZ
    writer_ns = np.zeros(frames, np.int64)
    next_send = time.monotonic()
    for i in range(frames + 20):  # a margin so the reader gets `frames` even if it misses the first
        next_send += period
        time.sleep(max(0.0, next_send - time.monotonic()))
        start = now_ns()
        origin = {"frame_id": i + 1, "capture_ns": start, "media_ns": 0, "stamps": (Stamp("capture", start),)}
        if case in ("zmq-copy", "zmq-floor"):
            pixels = source.tobytes() if case == "zmq-copy" else b"\0"
            publisher.socket.send_multipart([FRAMES.name.encode(), now_ns().to_bytes(8, "little"), pixels])
        elif case == "shm" and sender.ring is not None:
            reservation = sender.reserve(shape)
            reservation.array[0, 0, 0] = i % 256  # the frame is already decoded in place
            sender.send(reservation.array, **origin, reservation=reservation)
        else:
            sender.send(source, **origin)
        if i < frames:
            writer_ns[i] = now_ns() - start
    reader.join(30)
    saved = np.load(result_path) if Path(result_path).exists() else np.zeros(1, np.int64)
    latencies, lost = saved[:-1], int(saved[-1])
    sender.close()
    publisher.close()
    context.term()
    stats = percentiles_ms(latencies[10:])  # the first frames include the reader's first ring attach
    if not stats:
        raise RuntimeError(f"bench-handoff: {case} at {shape[1]}x{shape[0]}: the reader got {latencies.size} of {frames} "
                           f"frames ({lost} lost to a reader that fell behind), none past the first 10 "
                           "(--frames must be over 10)")
    return {"case": case, "resolution": f"{shape[1]}x{shape[0]}", "frames": int(max(latencies.size - 10, 0)), "lost": lost,
            "handoff_us": {k: round(v * 1000, 1) for k, v in stats.items() if k != "count"},
            "writer_us_p50": round(float(np.median(writer_ns)) / 1000, 1)}


def main(frames: int = 500, json_path: Path | None = None) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="handoff-", dir="/tmp") as workdir:
        for resolution, shape in RESOLUTIONS.items():
            for case in CASES:
                results.append(run_case(case, shape, frames, Path(workdir)))
                r = results[-1]
                h = r["handoff_us"]
                print(f"{r['resolution']:>10} {case:<13} handoff us: p50 {h['p50']:>8.1f}  p99 {h['p99']:>8.1f}  "
                      f"max {h['max']:>8.1f}   writer p50 {r['writer_us_p50']:>8.1f} us  ({r['frames']} frames"
                      + (f", {r['lost']} lost: the reader fell behind" if r["lost"] else "") + ")",
                      flush=True)
    if json_path:
        json_path.write_text(json.dumps({"benchmark": "frame_handoff", "send_hz": SEND_HZ, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
