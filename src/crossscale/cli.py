"""The ``crossscale`` command: index, search, info, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossscale.errors import ConfigurationError, CrossScaleError

if TYPE_CHECKING:
    from crossscale.workspace import VerifyReport

logger = logging.getLogger(__name__)


def _components(args: argparse.Namespace) -> dict[str, Any]:
    """open() keywords from the component flags (only those given: reopening uses the recorded ones)."""
    kw: dict[str, Any] = {"device": args.device, "progress": not args.no_progress}
    if args.encoder:
        kw["encoder"] = args.encoder
        if args.encoder_path:
            kw["encoder_kwargs"] = {"name_or_path": args.encoder_path}
    if getattr(args, "verifier", None):
        kw["verifier"] = False if args.verifier == "none" else args.verifier
    if args.segmenter:
        kw["segmenter"] = args.segmenter
        if args.yolo_model:
            kw["segmenter_kwargs"] = (
                {"yolo": {"model": args.yolo_model}} if "+" in args.segmenter else {"model": args.yolo_model}
            )
    return kw


def _cmd_index(args: argparse.Namespace) -> int:
    from crossscale.search import CrossScaleSearch

    kw = _components(args)
    if args.index:
        kw["index_factory"] = args.index
    if args.max_memory:
        kw["max_memory"] = args.max_memory
    if args.vector_dtype:
        kw["vector_dtype"] = args.vector_dtype
    if args.reduce_dim is not None:
        kw["reduce_dim"] = args.reduce_dim
    with CrossScaleSearch.open(args.workspace, batch_size=args.batch_size, **kw) as cs:
        report = cs.index(args.inputs)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(report)
            for failure in report.failed:
                print(f"  failed: {failure.source}: {failure.reason}")
    return 0 if report.ok else 3


def _cmd_search(args: argparse.Namespace) -> int:
    from crossscale.search import CrossScaleSearch
    from crossscale.types import SearchParams

    if (args.query is None) == (args.text is None):
        raise ConfigurationError("give a query image or --text, not both or neither")
    with CrossScaleSearch.open(
        args.workspace,
        readonly=True,
        device=args.device,
        progress=False,
        refine=not args.no_refine,
        verify_matches=not args.no_verify,
        refine_verified=args.refine_verified,
        local_search=args.local_search,
    ) as cs:
        params = None
        if any(v is not None for v in (args.nprobe, args.ef_search, args.rescore_per_parent)) or args.no_rescore:
            rescore = False if args.no_rescore else None
            params = SearchParams(
                nprobe=args.nprobe,
                ef_search=args.ef_search,
                rescore=rescore,
                rescore_per_parent=args.rescore_per_parent,
            )
        if args.text is not None:
            matches = cs.search_text(args.text, top_k=args.top_k, min_score=args.min_score, params=params)
        else:
            matches = cs.search(args.query, top_k=args.top_k, min_score=args.min_score, params=params)
        rows = [{**m.to_dict(), "source": cs.record(m.parent_id).source} for m in matches]
        if args.show:  # drawn while the workspace is open: the parents are read from it
            try:
                matches.show().save(args.show)
            except (ValueError, OSError) as exc:
                raise ConfigurationError(f"--show {args.show}: cannot write the picture: {exc}") from exc
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for rank, row in enumerate(rows, 1):
            where = f" {row['source']}" if row["source"] else ""
            checked = f"  verified ({row['inliers']} inliers)" if row["inliers"] is not None else ""
            print(f"{rank:>3}. {row['score']:.4f}  {row['parent_id']}{where}  box={row['box']} {row['kind']}{checked}")
        if not rows:
            print("no matches")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    import numpy as np

    from crossscale._images import load_image
    from crossscale._vectors import embed
    from crossscale.search import CrossScaleSearch
    from crossscale.types import SearchParams

    if sum([bool(args.queries), args.vectors is not None, args.sample is not None]) != 1:
        raise ConfigurationError("give query images, --vectors FILE.npy or --sample N: one of them")
    if args.seed is not None and args.sample is None:
        raise ConfigurationError("--seed is for --sample's draw: give --sample N")
    if args.sample is not None and args.sample < 1:
        raise ConfigurationError(f"--sample takes a positive number of stored regions, got {args.sample}")
    if args.seed is not None and args.seed < 0:
        raise ConfigurationError(f"--seed takes an int >= 0, got {args.seed}")
    if args.save and args.min_recall is None:
        raise ConfigurationError("--save keeps the setting --min-recall chooses: give --min-recall R")
    lists: list[int | None] = []
    for value in (args.nprobe or "own").split(","):
        try:
            lists.append(None if value.strip() == "own" else int(value))
        except ValueError as exc:
            raise ConfigurationError(f"--nprobe takes 'own' or numbers of lists, comma-separated: {value!r}") from exc
    ways: dict[str, list[bool | None]] = {"own": [None], "on": [True], "off": [False], "both": [True, False]}
    rescores = ways[args.rescore or "own"]
    settings: list[SearchParams | None] | None = [
        None if n is None and r is None else SearchParams(nprobe=n, rescore=r) for r in rescores for n in lists
    ]
    if args.min_recall is not None and args.nprobe is None and args.rescore is None:
        settings = None  # tune_search's own grid
    with CrossScaleSearch.open(
        args.workspace,
        encoder=None if args.queries else False,  # vectors need no model: none is loaded
        readonly=not args.save,
        device=args.device,
        progress=not args.no_progress,
        refine=False,
        verify_matches=False,
        local_search=False,
    ) as cs:
        if args.vectors is not None:
            try:
                vectors = np.load(args.vectors, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"--vectors {args.vectors}: not a readable .npy array: {exc}") from exc
        elif args.sample is not None:
            vectors = cs.sample_vectors(args.sample, seed=args.seed)
        else:
            vectors = embed(
                cs.encoder, [load_image(q, max_pixels=cs.max_pixels, to_store=False).image for q in args.queries]
            )
        measure = {"top_k": args.top_k, "repeats": args.repeats, "singles": args.singles}
        if args.min_recall is None:
            rows, tuning = cs.measure_search(vectors, settings or [None], **measure), None
        else:
            tuning = cs.tune_search(vectors, min_recall=args.min_recall, settings=settings, **measure)
            rows = list(tuning.measurements)
            if args.save and tuning.chosen is not None:
                cs.save_search_params(tuning.chosen.params)
    if args.json:
        print(json.dumps([m.to_dict() for m in rows] if tuning is None else tuning.to_dict(), indent=2))
    else:
        width = max([28, *(len((m.params or SearchParams()).describe()) for m in rows)])
        for m in rows:
            single = "" if m.single_p50_ms is None else f"  one query p50 {m.single_p50_ms:.2f} ms"
            mark = "*" if tuning is not None and m is tuning.chosen else " "
            print(
                f"{mark} {(m.params or SearchParams()).describe():<{width}}  recall@{args.top_k} {m.recall:.4f}  "
                f"{m.seconds:8.3f} s  {m.queries_per_second:8.1f} q/s{single}"
            )
        if tuning is not None and tuning.chosen is not None:
            print(f"fastest with recall@{args.top_k} >= {args.min_recall:g}: {tuning.params.describe()}")  # type: ignore[union-attr]
            if args.save:
                print("saved with the workspace: its searches start from it")
        elif tuning is not None:
            print(f"no setting reached recall@{args.top_k} {args.min_recall:g}")
    return 1 if tuning is not None and tuning.chosen is None else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from crossscale.search import CrossScaleSearch

    # encoder=False: nothing here encodes, so no model is loaded (and a workspace built with an encoder object opens)
    with CrossScaleSearch.open(args.workspace, encoder=False, readonly=True, device="cpu", progress=False) as cs:
        info = cs.info()  # "local_search": whether a search opened with the defaults uses it
    print(json.dumps(info, indent=2))
    return 0


def _cmd_preload(args: argparse.Namespace) -> int:
    from crossscale.workspace import preload_store

    read = preload_store(args.workspace, progress=not args.quiet)  # the store alone: no index, no model
    print(f"read {read} bytes of {args.workspace} into the page cache")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from crossscale.search import CrossScaleSearch

    ids = list(args.ids)
    if args.ids_file is not None:
        try:
            text = sys.stdin.read() if args.ids_file == "-" else Path(args.ids_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"--ids-file {args.ids_file}: cannot read it: {exc}") from exc
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise ConfigurationError("give the parent ids to delete, or --ids-file FILE (one per line, - for stdin)")
    # encoder=False: deleting encodes nothing (no model is loaded; a workspace built with an encoder object opens)
    with CrossScaleSearch.open(args.workspace, encoder=False, device="cpu", progress=False) as cs:
        missing = cs.delete_many(ids)
    asked = len(dict.fromkeys(ids))
    print(f"deleted {asked - len(missing)} parent(s)")
    for parent_id in missing:
        print(f"not stored: {parent_id}", file=sys.stderr)
    return 1 if missing and not args.missing_ok else 0


def _print_verify(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(
        f"{state}: {report.parents} parents, {report.chunks} chunks, {report.indexed} indexed vectors, "
        f"generation {report.generation}"
    )
    for problem in report.problems:
        print(f"  problem: {problem}")
    for note in report.notes:
        print(f"  note: {note}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from crossscale.search import CrossScaleSearch

    # no keypoint index in RAM (nor a warning about its size): verify and repair check and rebuild its file either way
    with CrossScaleSearch.open(
        args.workspace, encoder=False, readonly=True, device="cpu", progress=False, local_search=False
    ) as cs:
        report = cs.verify()
    _print_verify(report, args.json)
    return 0 if report.ok else 1


def _cmd_repair(args: argparse.Namespace) -> int:
    from crossscale.search import CrossScaleSearch

    with CrossScaleSearch.open(args.workspace, encoder=False, device="cpu", progress=False, local_search=False) as cs:
        cs.rebuild_index()
        report = cs.verify()
    _print_verify(report, args.json)
    return 0 if report.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from crossscale.demo import run_demo

    return run_demo(workspace=args.workspace, device=args.device, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossscale", description="Find the large images that contain a small one.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, components: bool = False) -> None:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if components:
            p.add_argument("--encoder", help="encoder name: clip, efficientnet-lite0, color-histogram")
            p.add_argument("--encoder-path", help="CLIP checkpoint: hub id or local directory")
            p.add_argument("--segmenter", help="segmenter name, e.g. whole+yolo+tiles, whole+tiles")
            p.add_argument("--yolo-model", help="YOLO weights: local path or ultralytics name")
            p.add_argument(
                "--verifier",
                help="a new workspace keeps local features to verify matches with: sift (the default) or none",
            )

    p = sub.add_parser("index", help="index images (a folder or files) into a workspace")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--workspace", "-w", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--index",
        help="a new workspace's chunk index: auto (the default), a faiss factory string, milvus (Milvus Lite in the "
        "workspace) or milvus://HOST:PORT (a Milvus server; needs crossscale[milvus])",
    )
    p.add_argument("--max-memory", help="RAM budget of an auto index, e.g. 4G (the default), 512M")
    p.add_argument("--vector-dtype", choices=("float16", "float32"), help="how a new workspace stores vectors")
    p.add_argument(
        "--reduce-dim",
        type=int,
        metavar="D",
        help="a new auto index projects vectors to D dimensions once it has enough of them (e.g. 256)",
    )
    common(p, components=True)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="find the indexed images that contain IMAGE (or show what --text describes)")
    p.add_argument("query", nargs="?", help="the small image")
    p.add_argument("--text", help="search by a description instead (needs an image-text encoder: clip, siglip)")
    p.add_argument("--workspace", "-w", required=True)
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--min-score", type=float, default=None)
    p.add_argument("--nprobe", type=int, help="IVF lists searched, for this search (default: the index's own)")
    p.add_argument("--ef-search", type=int, help="HNSW beam width, for this search (default: the index's own)")
    p.add_argument(
        "--no-rescore",
        action="store_true",
        help="rank an approximate index's own scores, without reading the stored vectors (faster, lower recall)",
    )
    p.add_argument(
        "--rescore-per-parent",
        type=int,
        metavar="N",
        help="re-score only each parent's first N hits against the stored vectors (most of --no-rescore's speed)",
    )
    p.add_argument(
        "--no-refine",
        action="store_true",
        help="skip re-scoring the top parents at the query's scale: much faster, coarser boxes, lower recall "
        "(docs/benchmarks.md)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the workspace's geometric verification")
    p.add_argument(
        "--refine-verified",
        action="store_true",
        help="refine a search even when its best match was verified (slower; only the matches below it change)",
    )
    local = p.add_mutually_exclusive_group()
    local.add_argument(
        "--local-search",
        action="store_const",
        const=True,
        dest="local_search",
        help="find parents by their local features too (SIFT votes over every parent's, verified before they are "
        "shown), whatever the workspace's size; by default on for up to 10,000 parents with a 'sift' verifier "
        "(docs/benchmarks.md)",
    )
    local.add_argument(
        "--no-local-search",
        action="store_const",
        const=False,
        dest="local_search",
        help="only the parents the vectors rank (no keypoint index in RAM)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--show", metavar="PNG", help="also draw the query and the ranked parents with their boxes into this image"
    )
    common(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "measure",
        help="parent recall (against an exhaustive search) and speed of a batch search under each setting, or the "
        "fastest reaching --min-recall",
    )
    p.add_argument("queries", nargs="*", help="query images (or give --vectors)")
    p.add_argument("--vectors", metavar="NPY", help="query vectors, one row each, from the workspace's encoder")
    p.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="N stored region vectors drawn at random as the queries, where there are none of the service's yet "
        "(each finds its own region first)",
    )
    p.add_argument("--seed", type=int, help="with --sample: a repeatable draw")
    p.add_argument("--workspace", "-w", required=True)
    p.add_argument("--nprobe", help="comma-separated lists per query to compare, 'own' for the index's (default)")
    p.add_argument(
        "--rescore",
        choices=("own", "on", "off", "both"),
        help="re-score an approximate index's hits against the stored vectors: as searches do (own, the default), "
        "on, off, or each --nprobe both ways",
    )
    p.add_argument(
        "--min-recall",
        type=float,
        metavar="R",
        help="choose the fastest setting whose recall reaches R (exit 1 if none does); without --nprobe and "
        "--rescore, the index's lists down to a quarter, each with and without re-scoring",
    )
    p.add_argument(
        "--save",
        action="store_true",
        help="save the setting --min-recall chooses with the workspace (opened for writing): later searches, "
        "`crossscale search` included, start from it",
    )
    p.add_argument("--top-k", "-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="searches per setting (the fastest is kept)")
    p.add_argument("--singles", type=int, default=0, help="also time this many queries searched one at a time")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser("info", help="describe a workspace")
    p.add_argument("--workspace", "-w", required=True)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("preload", help="read a workspace's store once so that the OS page cache holds it")
    p.add_argument("--workspace", "-w", required=True)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_preload)

    p = sub.add_parser(
        "delete", help="delete parents (with their chunks and vectors) in one commit; exit 1 if some were not stored"
    )
    p.add_argument("ids", nargs="*", help="parent ids")
    p.add_argument("--ids-file", metavar="FILE", help="more ids, one per line ('-': standard input)")
    p.add_argument("--missing-ok", action="store_true", help="exit 0 even if some ids were not stored")
    p.add_argument("--workspace", "-w", required=True)
    p.set_defaults(func=_cmd_delete)

    p = sub.add_parser("verify", help="check every invariant of a workspace (exit 1 if one is broken)")
    p.add_argument("--workspace", "-w", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("repair", help="rebuild a workspace's chunk index (FAISS or Milvus) from its store, then verify")
    p.add_argument("--workspace", "-w", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_repair)

    p = sub.add_parser("demo", help="offline demo on photos that ship with scikit-image")
    p.add_argument("--workspace", "-w", default=None, help="keep the demo workspace here (default: a temp dir)")
    common(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crossscale`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "index" and len(args.inputs) == 1:
        args.inputs = args.inputs[0]
    try:
        return int(args.func(args))
    except CrossScaleError as exc:
        print(f"crossscale: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
