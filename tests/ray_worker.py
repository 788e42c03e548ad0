"""Runs Ray ingest on a 2-node local Ray cluster, for tests/test_distributed.py (inside ``unshare -n``).

    python -m tests.ray_worker WORKSPACE IMAGES_DIR [--kill-encoder-after SECONDS] [--dataset | --as-bytes]

Starts a head node and a second node of one CPU each (``ray.cluster_utils.Cluster``), indexes IMAGES_DIR into
WORKSPACE with :func:`crossscale.distributed.index_with_ray` (2 prepare and 2 encode actors, 0.4 CPU each: Ray
Data needs some CPU left), and prints the report as JSON on the last line. With ``--kill-encoder-after``, a
thread SIGKILLs one encode actor's process that many seconds after it starts work on a batch: Ray restarts it and
retries the batch. With ``--dataset`` the images go in as a ``ray.data.Dataset`` of paths, with ``--as-bytes``
as a list of their files' bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _encoder_at_work() -> int | None:
    """The pid of an encode actor's process while it works on a batch (Ray names its processes by what they run)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::MapWorker(MapBatches(EncodeActor)).submit"):
            return int(entry)
    return None


def _kill_one_encoder(delay: float, done: threading.Event, killed: list[int]) -> None:
    deadline = time.time() + 120
    while not done.is_set() and time.time() < deadline:
        pid = _encoder_at_work()
        if pid is not None:
            time.sleep(delay)
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                continue
            return
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("images")
    parser.add_argument("--kill-encoder-after", type=float, default=None)
    parser.add_argument("--dataset", action="store_true", help="pass the images as a ray.data.Dataset of paths")
    parser.add_argument("--as-bytes", action="store_true", help="pass the images as a list of their files' bytes")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from crossscale import CrossScaleSearch
    from crossscale.distributed import index_with_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    done, killed = threading.Event(), []
    killer = None
    if args.kill_encoder_after is not None:
        killer = threading.Thread(target=_kill_one_encoder, args=(args.kill_encoder_after, done, killed), daemon=True)
        killer.start()
    try:
        with CrossScaleSearch.open(
            args.workspace,
            encoder="color-histogram",
            segmenter="whole+tiles",
            segmenter_kwargs={"tiles": {"scales": [0.5]}},
            verifier="sift",
            verifier_kwargs={"max_keypoints": 200},
            batch_size=4,
            progress=False,
            device="cpu",
        ) as cs:
            inputs: object = Path(args.images)
            files = sorted(Path(args.images).glob("*.png"))
            if args.dataset:
                inputs = ray.data.from_items([{"path": str(p)} for p in files])
            elif args.as_bytes:
                inputs = [p.read_bytes() for p in files]
            report = index_with_ray(
                cs, inputs, prepare_actors=2, prepare_num_cpus=0.4, encode_actors=2, encode_num_cpus=0.4
            )
    finally:
        done.set()
        if killer is not None:
            killer.join()
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"report": report.to_dict(), "killed": killed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
