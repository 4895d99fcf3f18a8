"""`hear-abt embed` with and without worker processes: wall time and the peak memory of the command and
its workers together (prints figures; not a test).

    .venv/bin/python benchmarks/bench_embed_memory.py [--model tiny|default] [--n-clips 2000]
        [--processes 2,0] [--cache-dir /work/cache/bench_embed_dataset]

The clips and the random-init model are those of ``bench_embed_dataset.py`` (same cache). Each variant is
one ``hear-abt embed CLIPS --out-dir OUT --quiet --processes P`` process, start-up included; memory is
the proportional set size (PSS: shared pages split among the processes sharing them) summed over the
command and its children, sampled every 0.25 s (``bench_checkpoint.MemorySampler``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_checkpoint import MemorySampler  # noqa: E402
from bench_embed_dataset import MODELS, clips_folder, model_weights  # noqa: E402

HEAR_ABT = Path(sys.executable).with_name("hear-abt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--n-clips", type=int, default=2000)
    parser.add_argument("--processes", default="2,0", help="comma-separated --processes values")
    parser.add_argument("--cache-dir", type=Path, default=Path("/work/cache/bench_embed_dataset"))
    args = parser.parse_args()
    cache = args.cache_dir.resolve()
    clips = sorted(clips_folder(cache, 2000, 5.0, 44100).glob("*.wav"))[: args.n_clips]
    weights = model_weights(cache, args.model)
    print(f"{len(clips)} clips of 5 s at 44.1 kHz, model {args.model}", flush=True)
    print("| --processes | wall s | files/s | peak PSS MiB |\n|---|---|---|---|")
    for p in [int(v) for v in args.processes.split(",")]:
        out = cache / "runs" / f"memory_p{p}"
        shutil.rmtree(out, ignore_errors=True)
        command = [str(HEAR_ABT), "embed", *map(str, clips), "--weights", str(weights), "--out-dir", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.Popen([*command, "--quiet", "--processes", str(p)], stdout=subprocess.DEVNULL)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        proc.wait()
        sampler.stop()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"--processes {p} failed with exit status {proc.returncode}")
        print(f"| {p} | {wall:.1f} | {len(clips) / wall:.1f} | {sampler.peak_pss / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
