"""`hear-abt embed FOLDER` on a dataset of short clips: today's one-file-at-a-time command against the
batched one, side by side in one run, and whether their outputs are equal (prints figures; not a test).

    .venv/bin/python benchmarks/bench_embed_dataset.py [--n-clips 2000] [--seconds 5] [--rate 44100]
        [--model tiny|default] [--variants old,new[,serial]] [--part 250] [--rounds 1]
        [--old-ref cf9e052] [--batch-size N] [--decode-workers N] [--processes N] [--json FILE]

The clips (numpy-made: notes with vibrato, chirps, chords, decaying and modulated noise, clicks, each
with a silent stretch; 16-bit mono WAV at ``--rate``, 44.1 kHz by default as ESC-50's 2,000 5-s clips)
are written once to ``--cache-dir``. The model is random-init AudioNTT written with ``save_pretrained``:
``tiny`` (channels 8, MLP 32: the tests' size, so that the per-file pipeline, not the MLP, is measured)
or ``default`` (channels 64, MLP 2048: the paper's size).

Variants, each the real command (``hear_abt.cli.main(["embed", *files, "--out-dir", OUT, "--quiet"])``,
model loading included) in a process of its own:

- ``old``: the command as committed at ``--old-ref`` (extracted with ``git archive`` into the cache;
  ``PYTHONPATH`` points there), one file at a time;
- ``new``: this tree, with ``--batch-size`` / ``--decode-workers`` if given (else the CLI's defaults);
- ``threads``: this tree with ``--processes 0`` (decoder and model threads in one process);
- ``serial``: this tree with ``--batch-size 1 --decode-workers 0 --processes 0`` (one HEAR API call per file, decoded
  between calls).

The machine may be shared, so the variants are interleaved finely: the clips are cut into parts of
``--part`` clips, and each part is embedded by every variant in turn (the order alternating), by
long-lived worker processes (warmed up on 4 clips first). Per variant: clips / total wall time, CPU
time per clip, the load average seen at the start of its runs; the ratio to ``old`` over all parts and
per part (adjacent runs see similar load). Then the outputs are compared file by file with ``old``'s
(files and order, failures, timestamps bitwise; embeddings bitwise or their largest relative difference).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
MODELS = {"tiny": {"channels": 8, "mlp_dim": 32}, "default": {}}
RUNNER = "import sys, hear_abt.cli as cli; print('code:', cli.__file__, file=sys.stderr); sys.exit(cli.main(sys.argv[1:]))"


# ---- data and model ------------------------------------------------------------------------------


def make_clip(i: int, seconds: float, rate: int) -> np.ndarray:
    """Clip ``i``: one of six kinds of sound with random parameters and a silent stretch, peak 0.3."""
    rng = np.random.default_rng(1000 + i)
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = rng.uniform(100, 800)
    kind = i % 6
    if kind == 0:  # a note with vibrato and decaying partials
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / rate
        x = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.exp(-rng.uniform(0.2, 1.5) * t)
    elif kind == 1:  # a chirp
        f1 = rng.uniform(1000, 7000)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
    elif kind == 2:  # a chord with an attack
        x = sum(np.sin(2 * np.pi * f0 * r * t) for r in (1, 1.25, 1.5)) * np.minimum(1, 4 * t)
    elif kind == 3:  # decaying, coloured noise bursts
        x = rng.standard_normal(t.size) * np.exp(-rng.uniform(1, 4) * (t % rng.uniform(0.5, 2.0)))
        x = np.convolve(x, np.ones(int(rng.integers(1, 8))), mode="same")
    elif kind == 4:  # amplitude-modulated noise
        x = rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * rng.uniform(2, 12) * t))
    else:  # clicks through a damped resonance
        x = np.zeros(t.size)
        x[:: int(rate / rng.uniform(3, 30))] = 1.0
        x = np.convolve(
            x, np.exp(-np.arange(400) / 40) * np.sin(np.arange(400) * rng.uniform(0.1, 1)), "same"
        )
    x = np.asarray(x, dtype=np.float64)
    lo = int(rng.uniform(0.1, 0.8) * t.size)
    x[lo : lo + int(rng.uniform(0.05, 0.15) * t.size)] = 0.0  # a silent stretch
    return (0.3 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def clips_folder(cache: Path, n: int, seconds: float, rate: int) -> Path:
    folder = cache / f"clips_{n}x{seconds:g}s_{rate}Hz"
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        sf.write(folder / f"clip_{i:05d}.wav", make_clip(i, seconds, rate), rate, subtype="PCM_16")
    done.write_text("ok\n")
    print(f"wrote {n} clips to {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def model_weights(cache: Path, size: str) -> Path:
    import torch

    from hear_abt.config import ModelConfig, NormStats
    from hear_abt.embedder import ABTEmbedder
    from hear_abt.weights import save_pretrained

    folder = cache / f"weights_{size}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = ModelConfig(encoder_kwargs=MODELS[size], norm=NormStats(mean=-5.0, std=7.0))
        save_pretrained(folder, config, ABTEmbedder(config).encoder.state_dict())
    return folder


def old_tree(cache: Path, ref: str) -> Path:
    """The package as committed at ``ref``, extracted once (``git archive``: the repository is only read)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    folder = cache / f"tree_{commit[:12]}"
    if not (folder / "hear_abt" / "cli.py").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", commit, "hear_abt"],
            check=True,
            capture_output=True,
        ).stdout
        tar_path = folder / "hear_abt.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(folder)
        tar_path.unlink()
    return folder


# ---- runs ----------------------------------------------------------------------------------------

WORKER = """
import contextlib, json, os, sys, time
import hear_abt.cli as cli
print(json.dumps({"code": cli.__file__}), flush=True)
for line in sys.stdin:
    args = json.loads(line)
    cpu = lambda: sum(os.times()[:4])  # this process and its finished children (worker processes)
    t0, c0 = time.perf_counter(), cpu()
    with contextlib.redirect_stdout(sys.stderr):
        status = cli.main(args)
    print(json.dumps({"status": status, "wall": time.perf_counter() - t0, "cpu": cpu() - c0}), flush=True)
"""


class Worker:
    """One process per variant, running ``hear_abt.cli.main(args)`` per request (its package from ``code``)."""

    def __init__(self, name: str, code: Path, work: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(code))
        self.log = open(work / f"{name}.log", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=work,  # not the repository root, which would shadow PYTHONPATH
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        used = json.loads(self.proc.stdout.readline())["code"]
        if not used.startswith(str(code)):
            raise SystemExit(f"{name}: imported {used}, not the package under {code}")

    def embed(self, args: list[str]) -> dict:
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} died; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def compare(old: Path, new: Path) -> dict:
    """File-by-file equality of two --out-dir folders."""
    from hear_abt.embeddings_io import open_embeddings

    a, b = open_embeddings(old), open_embeddings(new)
    same_files = [e["audio"] for e in a["files"]] == [e["audio"] for e in b["files"]]
    same_failed = [f["audio"] for f in a["failed"]] == [f["audio"] for f in b["failed"]]
    ts_ms_equal, ts_bitwise, ts_rel = True, 0, 0.0
    for ea, eb in zip(a["files"], b["files"]):
        x, y = np.asarray(ea["timestamp_embeddings"]), np.asarray(eb["timestamp_embeddings"])
        ts_ms_equal &= ea["n_timestamps"] == eb["n_timestamps"] and np.array_equal(
            ea["timestamps_ms"], eb["timestamps_ms"]
        )
        ts_bitwise += int(np.array_equal(x, y))
        ts_rel = max(ts_rel, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)))
    sa, sb = np.asarray(a["scene_embeddings"]), np.asarray(b["scene_embeddings"])
    scene_rows_bitwise = int((sa == sb).all(axis=1).sum())
    scene_rel = float((np.abs(sa - sb).max(axis=1) / np.maximum(np.abs(sa).max(axis=1), 1e-30)).max())
    return {
        "files": len(a["files"]),
        "same_files_and_order": same_files,
        "same_failed": same_failed,
        "timestamps_ms_equal": bool(ts_ms_equal),
        "timestamp_files_bitwise": ts_bitwise,
        "timestamp_max_rel_diff": ts_rel,
        "scene_rows_bitwise": scene_rows_bitwise,
        "scene_max_rel_diff": scene_rel,
    }


def compare_parts(old: Path, new: Path, n_parts: int) -> dict:
    """:func:`compare` over the parts of two variants' runs, combined."""
    parts = [compare(old / f"part_{p:03d}", new / f"part_{p:03d}") for p in range(n_parts)]
    combined = {}
    for key in parts[0]:
        values = [x[key] for x in parts]
        if isinstance(values[0], bool):
            combined[key] = all(values)
        elif key.endswith("rel_diff"):
            combined[key] = max(values)
        else:
            combined[key] = sum(values)
    return combined


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-clips", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--rate", type=int, default=44100, help="sample rate of the clips (resampled to 16 kHz)"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all clips per variant")
    parser.add_argument(
        "--part", type=int, default=250, help="clips per command; variants alternate per part"
    )
    parser.add_argument("--variants", default="old,new", help="of old,new,threads,serial")
    parser.add_argument(
        "--old-ref", default="cf9e052", help="git commit of today's one-file-at-a-time command"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="new: --batch-size (default: the CLI's)")
    parser.add_argument("--decode-workers", type=int, default=None, help="new: --decode-workers (the CLI's)")
    parser.add_argument("--processes", type=int, default=None, help="new: --processes (default: the CLI's)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/work/cache/bench_embed_dataset"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    cache = args.cache_dir.resolve()
    clips = clips_folder(cache, args.n_clips, args.seconds, args.rate)
    weights = model_weights(cache, args.model)
    work = cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    new_opts = []
    if args.batch_size is not None:
        new_opts += ["--batch-size", str(args.batch_size)]
    if args.decode_workers is not None:
        new_opts += ["--decode-workers", str(args.decode_workers)]
    if args.processes is not None:
        new_opts += ["--processes", str(args.processes)]
    variants = {
        "old": (old_tree(cache, args.old_ref), []),
        "new": (REPO, new_opts),
        "threads": (REPO, ["--processes", "0"]),
        "serial": (REPO, ["--batch-size", "1", "--decode-workers", "0", "--processes", "0"]),
    }
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(
        f"{args.n_clips} clips of {args.seconds:g} s at {args.rate} Hz, model {args.model} AudioNTT "
        f"{MODELS[args.model] or '(channels 64, mlp_dim 2048)'}, {os.cpu_count()} CPUs, "
        f"variants {chosen}, {args.rounds} round(s)",
        flush=True,
    )
    files = sorted(clips.glob("*.wav"))
    parts = [files[i : i + args.part] for i in range(0, len(files), args.part)]
    workers = {name: Worker(name, variants[name][0], work) for name in chosen}
    common = ["--weights", str(weights), "--quiet"]
    for name in chosen:  # warm-up (not timed): imports, first torch calls
        workers[name].embed(["embed", *map(str, files[:4]), "--out-dir", str(work / "warmup"), *common])
    runs = []
    k = 0
    for r in range(args.rounds):
        for p, part in enumerate(parts):
            for name in chosen if k % 2 == 0 else chosen[::-1]:
                out = work / name / f"part_{p:03d}"
                shutil.rmtree(out, ignore_errors=True)
                load = os.getloadavg()[0]
                res = workers[name].embed(
                    ["embed", *map(str, part), "--out-dir", str(out), *common, *variants[name][1]]
                )
                if res["status"] != 0:
                    raise SystemExit(f"{name} failed on part {p}: see {work / name}.log")
                runs.append({"variant": name, "round": r + 1, "part": p, "n": len(part), "load": load, **res})
            k += 1
            line = "  ".join(
                f"{x['variant']} {x['n'] / x['wall']:6.2f} files/s" for x in runs[-len(chosen) :]
            )
            print(
                f"round {r + 1} part {p + 1}/{len(parts)}: {line}  (load {runs[-1]['load']:.1f})", flush=True
            )
    for w in workers.values():
        w.close()

    print("\n| variant | options | clips | wall s | files/s | CPU ms/file | load avg (min / median / max) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for name in chosen:
        mine = [x for x in runs if x["variant"] == name]
        n, wall, cpu = sum(x["n"] for x in mine), sum(x["wall"] for x in mine), sum(x["cpu"] for x in mine)
        loads = [x["load"] for x in mine]
        summary[name] = {"files_per_s": n / wall, "wall": wall, "cpu_ms_per_file": 1000 * cpu / n}
        options = " ".join(variants[name][1]) or ("(defaults)" if name != "old" else f"({args.old_ref})")
        print(
            f"| {name} | {options} | {n} | {wall:.1f} | {n / wall:.2f} | {1000 * cpu / n:.1f} | "
            f"{min(loads):.1f} / {statistics.median(loads):.1f} / {max(loads):.1f} |"
        )
    print()
    if "old" in chosen:
        for name in chosen:
            if name == "old":
                continue
            paired = [
                a["wall"] / b["wall"]
                for a in runs
                if a["variant"] == "old"
                for b in runs
                if b["variant"] == name and (b["round"], b["part"]) == (a["round"], a["part"])
            ]
            ratio = summary[name]["files_per_s"] / summary["old"]["files_per_s"]
            summary[name]["ratio"] = ratio
            print(
                f"{name} / old: {ratio:.2f}x files/s over all parts; per part (adjacent runs): median "
                f"{statistics.median(paired):.2f}x, range {min(paired):.2f}-{max(paired):.2f}x"
            )
    equality = {}
    for v in chosen:
        if v != "old" and "old" in chosen:
            equality[v] = compare_parts(work / "old", work / v, len(parts))
            print(f"outputs old vs {v}: {json.dumps(equality[v])}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "runs": runs,
                    "summary": summary,
                    "equality": equality,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
