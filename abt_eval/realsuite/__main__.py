"""Command line of ``abt_eval.realsuite``: ``build`` a suite, a disjoint pre-training ``corpus``, or the
k-fold selection ``folds`` of a built scene task."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __doc__ as package_doc
from .build import build_suite
from .corpus import CORPUS_PACKAGES, OverlapError, build_corpus
from .folds import FoldsError, make_folds
from .sources import FetchError
from .tasks import EVENT_CLIPS, TASKS

DEFAULT_CACHE = "/work/cache/realsuite-src"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.realsuite", description=package_doc.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("build", "corpus"):
        p = sub.add_parser(name)
        p.add_argument("out_dir")
        p.add_argument("--cache", default=DEFAULT_CACHE, help="where debs are downloaded and unpacked")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
        p.add_argument("--no-fetch", action="store_true", help="use only packages already in the cache")
        p.add_argument("--no-progress", action="store_true")
    b = sub.choices["build"]
    b.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    b.add_argument("--event-clips", default=",".join(str(v) for v in EVENT_CLIPS.values()),
                   help="clips of the events task in train,valid,test")  # fmt: skip
    b.add_argument("--force", action="store_true", help="rebuild even if complete")
    c = sub.choices["corpus"]
    c.add_argument("--suite", default=None, help="a built real suite to check against (its provenance.json)")
    c.add_argument("--max-clips", type=int, default=None)
    c.add_argument("--packages", default=",".join(CORPUS_PACKAGES))
    f = sub.add_parser(
        "folds", help="k folds of a built scene task's train+valid splits, to choose recipes on"
    )
    f.add_argument("task_dir", help="a built scene task, e.g. SUITE/drums")
    f.add_argument("out_dir", help="the k-fold task to write, e.g. SUITE/drums-folds")
    f.add_argument("--k", type=int, default=5)
    f.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command == "folds":
        try:
            meta = make_folds(args.task_dir, args.out_dir, k=args.k, seed=args.seed)
        except FoldsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        sizes = [len(json.loads((Path(args.out_dir) / f"{s}.json").read_text())) for s in meta["splits"]]
        print(f"{meta['task_name']}: {meta['nfolds']} folds of {sizes} clips -> {args.out_dir}")
        return 0
    common = {
        "seed": args.seed,
        "jobs": args.jobs,
        "fetch": not args.no_fetch,
        "progress": not args.no_progress,
    }
    try:
        if args.command == "build":
            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
            unknown = [t for t in tasks if t not in TASKS]
            if unknown:
                ap.error(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
            counts = [int(v) for v in args.event_clips.split(",")]
            if len(counts) != 3 or min(counts) < 1:
                ap.error("--event-clips takes three positive counts: train,valid,test")
            event_clips = dict(zip(("train", "valid", "test"), counts))
            build_suite(
                args.out_dir, args.cache, tasks=tasks, event_clips=event_clips, force=args.force, **common
            )
        else:
            packages = [p.strip() for p in args.packages.split(",") if p.strip()]
            build_corpus(args.out_dir, args.cache, packages=packages, suite_dir=args.suite,
                         max_clips=args.max_clips, **{**common, "jobs": common["jobs"] or (os.cpu_count() or 1)})  # fmt: skip
    except (FetchError, OverlapError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
