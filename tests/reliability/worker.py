"""A writer process for crash, concurrency and disk-full tests.

    python -m tests.reliability.worker WORKSPACE IMAGES_DIR [--map-size BYTES] [--fsize-limit BYTES]
        [--scales 0.5,0.25] [--flat-max N] [--index FACTORY] [--reduce-dim D] [--local-search] [--defer-saves]

Indexes every image of IMAGES_DIR (content-hash ids, 4 per batch), then deletes the parents whose
file name contains "-del" (half of them one at a time, the rest in one ``delete_many``). Prints "ready" once
imported and "done" at the end, so a test can kill it at a random point of real work. Running it again finishes
whatever a killed run left undone.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("images")
    parser.add_argument("--map-size", type=int, default=64 << 20)
    parser.add_argument("--fsize-limit", type=int, default=0, help="RLIMIT_FSIZE: simulates a full disk")
    parser.add_argument("--scales", default="0.5", help="tile scales, comma-separated")
    parser.add_argument("--flat-max", type=int, default=0, help="an 'auto' index leaves Flat above N vectors")
    parser.add_argument("--index", default=None, help="a new workspace's index_factory, e.g. milvus")
    parser.add_argument("--reduce-dim", type=int, default=None, help="an 'auto' index projects to D dimensions")
    parser.add_argument(
        "--local-search", action="store_true", help="local search whatever the size (default: the library's default)"
    )
    parser.add_argument(
        "--defer-saves", action="store_true", help="index files never due after index(): written at close only"
    )
    args = parser.parse_args()
    if args.fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))

    from crossscale import CrossScaleSearch
    from crossscale.index import choose

    if args.flat_max:
        choose.FLAT_MAX = args.flat_max  # saves then migrate the index (Flat -> IVF, more lists) as it grows

    files = sorted(Path(args.images).glob("*.png"))
    print("ready", flush=True)
    with CrossScaleSearch.open(
        args.workspace,
        encoder="color-histogram",
        segmenter="whole+tiles",
        segmenter_kwargs={"tiles": {"scales": [float(s) for s in args.scales.split(",")]}},
        verifier="sift",  # local features too: in the same transactions, so covered by every kill
        verifier_kwargs={"max_keypoints": 200},
        batch_size=4,
        progress=False,
        device="cpu",
        map_size=args.map_size,
        index_factory=args.index,
        reduce_dim=args.reduce_dim,
        local_search=True if args.local_search else None,  # on by default here (a few dozen parents)
    ) as cs:
        if args.defer_saves:
            from crossscale.workspace import SaveSchedule

            cs.workspace.save_schedule = SaveSchedule(last_write_seconds=float("inf"))
            if cs.local is not None:
                cs.local.save_schedule = SaveSchedule(last_write_seconds=float("inf"))
        report = cs.index(files)
        added_sources = [cs.record(pid).source for pid in report.added]
        summary = {
            "added": len(report.added),
            "added_sources": added_sources,
            "failed": [f.reason for f in report.failed],
        }
        print(json.dumps(summary), flush=True)
        doomed = [
            record_id
            for path in files
            if "-del" in path.name
            and (record_id := next((pid for pid in cs.parent_ids() if cs.record(pid).source == str(path)), None))
        ]
        for record_id in doomed[: len(doomed) // 2]:  # one at a time, then the rest in one transaction
            cs.delete(record_id)
        cs.delete_many(doomed[len(doomed) // 2 :])
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
