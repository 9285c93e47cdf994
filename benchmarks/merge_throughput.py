"""Offline merge throughput and memory: ckptmerge vs mergekit vs a plain copy, in one run.

Creates (or reuses from a cache folder) two fp16 checkpoints shaped exactly like Pythia-1B (GPT-NeoX
tensor names, the ``attention.bias``/``masked_bias``/``inv_freq`` buffers real Pythia checkpoints carry,
random values, sharded safetensors), then times, each as its own process with its peak RSS taken from
``wait4``:

* **ckptmerge**: ``python src/main.py model=local ... action=merge`` (what a user runs);
* **mergekit**: ``mergekit-yaml`` with a ``linear`` config on the same inputs;
* **copy**: ``cp`` of the newest checkpoint's weight files, the same number of bytes as the output:
  the I/O floor.
* **copy-both**: ``cp`` of both inputs' weight files (issue 23's "a plain copy of the inputs' bytes");
* **import-torch**: ``python -c "import torch"``: with the copy, the floor of any merge process in Python
  (printed with the speed-up over mergekit it would allow).
* **numpy** (``--torch-free``): ``benchmarks/numpy_merge.py``, the same linear merge without torch (numpy
  over memory maps, no checks): whether a torch-free merge path, which would save the ``import torch``
  above, could be faster at all. Its output is compared with ckptmerge's too.

Ratios are printed for the process (what a user waits for) and for the merge itself (the stream's own
time from the log line ``Wrote merged checkpoint ... in X s``: interpreter start-up, Hydra and exit
excluded).

The two merges are compared tensor by tensor (within one ulp of fp16), then outputs are deleted. The
three runs are repeated (``--repeat``, default 3 rounds on a warm cache, where one run takes seconds
and a shared VM's noise is of the same order; 1 on a cold cache) and each one's median is reported. It
prints wall time, peak RSS, other processes' CPU use during each run (the machine's noise) and the
ratios against the targets (>= 5x faster than mergekit, <= 1.2x the copy floor, peak RSS <= 1 GB; with
``--shape pythia-6.9b``, peak RSS <= 2 GB).

    python benchmarks/merge_throughput.py                        # Pythia-1B shape, ~2 GB per checkpoint
    python benchmarks/merge_throughput.py --shape pythia-6.9b    # ~14 GB per checkpoint, ~45 GB free disk
    python benchmarks/merge_throughput.py --cache DIR --clean    # where inputs live; delete them after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

import torch  # noqa: E402

from tests.scale.synthetic import SHAPES, drop_from_page_cache, folder_bytes, neox_tensors, write_neox_checkpoint  # noqa: E402

GENERATOR_VERSION = 1
WEIGHTS = (0.3, 0.7)
RSS_TARGET = {"pythia-1b": 1e9, "pythia-6.9b": 2e9}
COPY_TARGET = 1.2  # issue 23: within 1.2x of a plain copy of the inputs' bytes (was 2x)


@dataclass
class Measured:
    name: str
    wall_s: float
    peak_rss_bytes: int
    cpu_s: float
    others_cpu_cores: float  # CPU that other processes used while this ran, in cores
    engine_s: float | None = None
    failed: str | None = None
    walls: list[float] | None = None  # every round's wall time (the reported one is their median)


def median_run(runs: list[Measured]) -> Measured:
    """The round with the median wall time, carrying every round's wall time and the worst peak RSS."""
    ok = [r for r in runs if not r.failed]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r.wall_s)
    mid = ok[(len(ok) - 1) // 2]
    mid.walls = [r.wall_s for r in runs]
    mid.peak_rss_bytes = max(r.peak_rss_bytes for r in ok)
    return mid


def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# Runs a command as its child and reports the child's rusage. A bare interpreter (-S) forks it, because
# a child's ru_maxrss also counts the image it was forked from before exec: forked from this process
# (torch loaded) every run would "peak" at our own ~0.5 GB.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, st, ru = os.wait4(pid, 0)
print("@@rusage " + json.dumps({"rc": os.waitstatus_to_exitcode(st), "maxrss_kb": ru.ru_maxrss,
                                "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
"""


def measure(name: str, cmd: list[str], log: Path, cwd: Path | None = None) -> Measured:
    """Run ``cmd``; its wall time, peak RSS and CPU (from ``wait4``), and the machine's other CPU use."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    busy0, t0 = _cpu_busy_s(), time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            check=False,
        )
    wall, busy = time.perf_counter() - t0, _cpu_busy_s() - busy0
    found = re.findall(r"^@@rusage (.*)$", log.read_text(), flags=re.M)
    ru = json.loads(found[-1]) if found else {"rc": -1, "maxrss_kb": 0, "cpu_s": 0.0}
    m = Measured(name, wall, ru["maxrss_kb"] * 1024, ru["cpu_s"], max(0.0, busy - ru["cpu_s"]) / wall)
    if ru["rc"] != 0:
        m.failed = (
            f"exit {ru['rc']}: {log.read_text()[-600:].strip().splitlines()[-1] if log.read_text().strip() else ''}"
        )
        print(f"{name} failed ({m.failed}); log: {log}", flush=True)
    return m


def ensure_inputs(cache: Path, shape: str) -> list[Path]:
    """Two Pythia-shaped fp16 checkpoints in ``cache``, created once and reused while their marker matches."""
    spec = {"shape": shape, "dtype": "float16", "version": GENERATOR_VERSION, "shard_bytes": 1 << 30}
    out = []
    for i in range(2):
        folder = cache / shape / f"step{i + 1}"
        marker = folder / "bench.json"
        if marker.is_file() and json.loads(marker.read_text()) == spec:
            out.append(folder)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        write_neox_checkpoint(folder, shape, torch.float16, seed=i + 1, shard_bytes=spec["shard_bytes"])
        marker.write_text(json.dumps(spec))
        print(f"created {folder} ({folder_bytes(folder) / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
        out.append(folder)
    return out


def warm(folders: list[Path], cold: bool) -> None:
    """Same page-cache state before every run: inputs read once (warm) or dropped (cold); output flushed."""
    os.sync()
    for f in folders:
        if cold:
            drop_from_page_cache(f)
        else:
            for p in f.glob("*.safetensors"):
                with open(p, "rb") as fh:
                    while fh.read(16 << 20):
                        pass


def compare(ours: Path, theirs: Path) -> tuple[int, int]:
    """(largest ulp distance over floating tensors, tensors compared); memory stays flat (mapped, chunked)."""
    from ckptmerge.checkpoints import CheckpointReader, pages

    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    if set(a.keys()) != set(b.keys()):
        sys.exit(f"outputs differ in tensor names: {sorted(set(a.keys()) ^ set(b.keys()))[:3]}")
    worst = 0
    for key in b.keys():
        x, y = a.get(key).reshape(-1), b.get(key).reshape(-1)
        if x.dtype != y.dtype:
            sys.exit(f"{key}: dtype {x.dtype} vs {y.dtype}")
        for s in range(0, x.numel(), 1 << 22):
            xs, ys = x[s : s + (1 << 22)], y[s : s + (1 << 22)]
            if x.is_floating_point():
                itype = {2: torch.int16, 4: torch.int32}[x.element_size()]
                lo = -(1 << (8 * x.element_size() - 1))
                xi, yi = xs.view(itype).to(torch.int64), ys.view(itype).to(torch.int64)
                d = (torch.where(xi < 0, lo - xi, xi) - torch.where(yi < 0, lo - yi, yi)).abs().max()
                worst = max(worst, int(d))
            elif not torch.equal(xs, ys):
                sys.exit(f"{key}: non-floating tensor differs")
            pages.release([xs, ys])
    return worst, len(b.keys())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="pythia-1b", choices=[s for s in SHAPES if s.startswith("pythia")])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("CKPTMERGE_BENCH_CACHE", "/tmp/ckptmerge-bench")))
    ap.add_argument("--work", type=Path, help="where outputs go, in a fresh subfolder (default: the cache folder)")
    ap.add_argument("--no-mergekit", action="store_true", help="skip the mergekit run")
    ap.add_argument("--torch-free", action="store_true", help="also time benchmarks/numpy_merge.py (no torch)")
    ap.add_argument("--cold", action="store_true", help="drop the inputs from the page cache before each run")
    ap.add_argument("--clean", action="store_true", help="delete the cached inputs at the end")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds of the three runs, median reported (default: 3 for a warm cache, 1 for a cold one)",
    )
    args = ap.parse_args()

    per_ckpt = sum(m.nbytes for m in neox_tensors(SHAPES[args.shape]).values())
    work = ((args.work or args.cache) / f"work-{os.getpid()}").absolute()
    work.mkdir(parents=True)
    cached = all((args.cache / args.shape / f"step{i}" / "bench.json").is_file() for i in (1, 2))
    keep_both = not args.no_mergekit
    need = (0 if cached else 2 * per_ckpt) + per_ckpt * (2 if keep_both else 1) + (2 << 30)
    free = shutil.disk_usage(work).free
    if free < need:
        sys.exit(f"need {need / 1e9:.0f} GB free in {work}, have {free / 1e9:.0f} GB")
    srcs = ensure_inputs(args.cache, args.shape)
    print(f"load average at the start (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cold = args.cold or 2 * per_ckpt > ram / 2  # inputs that cannot stay cached are measured cold
    try:
        results, out_bytes, copied = run_all(args, srcs, work, cold)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.clean:
            shutil.rmtree(args.cache / args.shape, ignore_errors=True)
    report(args, results, per_ckpt, out_bytes, copied, cold)


def run_all(args: argparse.Namespace, srcs: list[Path], work: Path, cold: bool) -> tuple[list[Measured], int, int]:
    """``--repeat`` rounds of the three timed runs (median of each); the two merges are compared once."""
    rounds = args.repeat or (1 if cold else 3)
    names = ["ckptmerge"] + ([] if args.no_mergekit else ["mergekit"]) + ["copy", "copy-both", "import-torch"]
    names += ["numpy"] if args.torch_free else []
    runs: dict[str, list[Measured]] = {n: [] for n in names}
    out_bytes = copied = 0
    for i in range(rounds):
        m, mk, cp, cp2, npy, out_bytes, copied = one_round(args, srcs, work, cold, compare_outputs=(i == 0))
        # what any merge process in Python pays before its first byte: the interpreter and `import torch`
        imp = measure("import-torch", [sys.executable, "-c", "import torch"], work / "import.log")
        for r in (m, mk, cp, cp2, imp, npy):
            if r is not None:
                runs[r.name].append(r)
        if rounds > 1:
            print(
                f"round {i + 1}/{rounds}: "
                + ", ".join(f"{r.name} {r.wall_s:.2f} s" for r in (m, mk, cp, cp2, imp, npy) if r)
                + f"; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return [median_run(runs[n]) for n in names], out_bytes, copied


def one_round(
    args: argparse.Namespace, srcs: list[Path], work: Path, cold: bool, compare_outputs: bool
) -> tuple[Measured, Measured | None, Measured, Measured, Measured | None, int, int]:
    """The timed runs (and, once, the comparison of the two merges); outputs are deleted as they go."""
    mergekit = shutil.which("mergekit-yaml") or str(Path(sys.executable).with_name("mergekit-yaml"))
    ours_out, mk_out, cp_out = work / "ours", work / "mergekit", work / "copy"
    shutil.rmtree(work / "run", ignore_errors=True)

    warm(srcs, cold)
    ckpts = ",".join(str(s) for s in srcs)
    m = measure(
        "ckptmerge",
        [
            sys.executable,
            str(REPO / "src" / "main.py"),
            "model=local",
            f"model.checkpoints=[{ckpts}]",
            "action=merge",
            f"merge.weights=[{WEIGHTS[0]},{WEIGHTS[1]}]",
            f"merge.output_dir={ours_out}",
            f"hydra.run.dir={work / 'run'}",
        ],
        work / "ckptmerge.log",
        cwd=work,
    )
    if m.failed:
        sys.exit(f"ckptmerge failed:\n{(work / 'ckptmerge.log').read_text()[-3000:]}")
    engine = re.search(r"Wrote merged checkpoint .* in ([0-9.]+) s", (work / "ckptmerge.log").read_text())
    m.engine_s = float(engine.group(1)) if engine else None
    out_bytes = folder_bytes(ours_out)

    mk = None
    if not args.no_mergekit:
        cfg = work / "linear.yml"
        cfg.write_text(
            "merge_method: linear\nmodels:\n"
            + "".join(f"  - model: {s}\n    parameters:\n      weight: {w}\n" for s, w in zip(srcs, WEIGHTS))
        )
        warm(srcs, cold)
        mk = measure(
            "mergekit",
            [mergekit, str(cfg), str(mk_out), "--no-copy-tokenizer", "--no-write-model-card", "--quiet"],
            work / "mergekit.log",
        )
        if not mk.failed and compare_outputs:
            worst, n = compare(ours_out, mk_out)
            print(f"ckptmerge vs mergekit: {n} tensors, largest difference {worst} ulp (fp16)", flush=True)
        shutil.rmtree(mk_out, ignore_errors=True)
    npy = None
    if args.torch_free:
        np_out = work / "numpy"
        warm(srcs, cold)
        weights = [str(w) for w in WEIGHTS]
        script = str(REPO / "benchmarks" / "numpy_merge.py")
        cmd = [sys.executable, script, *map(str, srcs), str(np_out), "--weights", *weights]
        npy = measure("numpy", cmd, work / "np.log")
        if not npy.failed and compare_outputs:
            worst, n = compare(ours_out, np_out)
            print(f"ckptmerge vs numpy: {n} tensors, largest difference {worst} ulp (fp16)", flush=True)
        shutil.rmtree(np_out, ignore_errors=True)
    shutil.rmtree(ours_out)

    warm(srcs, cold)
    cp_out.mkdir()
    files = [str(p) for p in sorted(srcs[-1].glob("*.safetensors"))]
    cp = measure("copy", ["cp", "--reflink=never", *files, str(cp_out)], work / "copy.log")
    copied = folder_bytes(cp_out)
    shutil.rmtree(cp_out)
    os.sync()
    # issue 23's wording, "a plain copy of the inputs' bytes": both inputs copied (twice the writes)
    warm(srcs, cold)
    cmds = []
    for i, src in enumerate(srcs):
        (cp_out / str(i)).mkdir(parents=True)
        files = " ".join(shlex.quote(str(p)) for p in sorted(src.glob("*.safetensors")))
        cmds.append(f"cp --reflink=never {files} {shlex.quote(str(cp_out / str(i)))}")
    script = "set -e; " + "; ".join(cmds)
    cp2 = measure("copy-both", ["sh", "-c", script], work / "copy-both.log")
    shutil.rmtree(cp_out)
    os.sync()
    return m, mk, cp, cp2, npy, out_bytes, copied


def report(
    args: argparse.Namespace, results: list[Measured], per_ckpt: int, out_bytes: int, copied: int, cold: bool
) -> None:
    """The table, the ratios against the targets, and optionally a JSON file."""
    by = {r.name: r for r in results}
    print(
        f"\n{args.shape}: 2 x {per_ckpt / 1e9:.2f} GB fp16 in, {out_bytes / 1e9:.2f} GB out "
        f"(copy floor: {copied / 1e9:.2f} GB); {'cold' if cold else 'warm'} page cache; {os.cpu_count()} CPUs"
    )
    print(
        f"{'run':<10} {'wall s':>8} {'GB/s out':>9} {'peak RSS GB':>12} {'CPU s':>7} {'others CPU':>11}  rounds "
        "(wall s)"
    )
    for r in results:
        if r.failed:
            print(f"{r.name:<10} FAILED after {r.wall_s:.1f} s, peak RSS {r.peak_rss_bytes / 1e9:.2f} GB ({r.failed})")
            continue
        rounds = " ".join(f"{w:.2f}" for w in r.walls) if r.walls and len(r.walls) > 1 else ""
        print(
            f"{r.name:<10} {r.wall_s:>8.2f} {out_bytes / r.wall_s / 1e9:>9.2f} {r.peak_rss_bytes / 1e9:>12.2f} "
            f"{r.cpu_s:>7.1f} {r.others_cpu_cores:>10.2f}c  {rounds}"
        )
    ours = by["ckptmerge"]
    if ours.engine_s:
        print(
            f"(ckptmerge's merge itself, content checks included, without interpreter start-up: {ours.engine_s:.2f} s)"
        )
    rss_target = RSS_TARGET[args.shape] if args.shape in RSS_TARGET else None
    verdicts = []
    if "mergekit" in by and not by["mergekit"].failed:
        speedup = by["mergekit"].wall_s / ours.wall_s
        verdicts.append(("speed-up vs mergekit", f"{speedup:.1f}x", ">= 5x", speedup >= 5))
    floor = ours.wall_s / by["copy"].wall_s
    verdicts.append(("time / copy floor", f"{floor:.2f}x", f"<= {COPY_TARGET}x", floor <= COPY_TARGET))
    if "copy-both" in by and not by["copy-both"].failed:
        both = ours.wall_s / by["copy-both"].wall_s
        verdicts.append(("time / copy of both inputs", f"{both:.2f}x", f"<= {COPY_TARGET}x", both <= COPY_TARGET))
    if ours.engine_s and "mergekit" in by and not by["mergekit"].failed:
        speedup = by["mergekit"].wall_s / ours.engine_s
        verdicts.append(("merge itself vs mergekit", f"{speedup:.1f}x", ">= 5x", speedup >= 5))
    if ours.engine_s and "copy-both" in by and not by["copy-both"].failed:
        both = ours.engine_s / by["copy-both"].wall_s
        verdicts.append(("merge itself / copy of both", f"{both:.2f}x", f"<= {COPY_TARGET}x", both <= COPY_TARGET))
    if ours.engine_s:
        verdicts.append(
            (
                "merge itself / copy floor",
                f"{ours.engine_s / by['copy'].wall_s:.2f}x",
                f"<= {COPY_TARGET}x",
                ours.engine_s / by["copy"].wall_s <= COPY_TARGET,
            )
        )
    if rss_target:
        verdicts.append(
            (
                "peak RSS",
                f"{ours.peak_rss_bytes / 1e9:.2f} GB",
                f"<= {rss_target / 1e9:.0f} GB",
                ours.peak_rss_bytes <= rss_target,
            )
        )
    for name, got, target, ok in verdicts:
        print(f"{name:<28} {got:>10}   target {target:<8} {'ok' if ok else 'MISSED'}")
    imp = by.get("import-torch")
    if imp is not None and not imp.failed and "mergekit" in by and not by["mergekit"].failed:
        # No Python merge process can beat `import torch` plus writing the output's bytes (the copy floor);
        # reading two inputs and the arithmetic come on top, partly overlapped on other cores.
        floor = imp.wall_s + by["copy"].wall_s
        print(
            f"floor of any torch merge process: import torch {imp.wall_s:.2f} s + copy of the output's bytes "
            f"{by['copy'].wall_s:.2f} s = {floor:.2f} s = {by['mergekit'].wall_s / floor:.1f}x mergekit at best "
            f"(5x needs {by['mergekit'].wall_s / 5:.2f} s); ckptmerge's start-up and exit (process - merge itself): "
            + (f"{ours.wall_s - ours.engine_s:.2f} s" if ours.engine_s else "n/a")
        )
    npy = by.get("numpy")
    if npy is not None and not npy.failed and imp is not None and not imp.failed:
        # The torch-free lever: it saves `import torch` but pays numpy's casts, which are not vectorised.
        print(
            f"torch-free merge (numpy): {npy.wall_s:.2f} s = {npy.wall_s / ours.wall_s:.2f}x ckptmerge's process"
            + (f", {by['mergekit'].wall_s / npy.wall_s:.1f}x faster than mergekit" if "mergekit" in by else "")
            + f"; it would have to beat {ours.wall_s - imp.wall_s:.2f} s (ckptmerge without `import torch`)"
        )
    print(f"load average at the end (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "out_bytes": out_bytes,
                    "copy_bytes": copied,
                    "runs": [asdict(r) for r in results],
                    "verdicts": [dict(zip(("name", "value", "target", "ok"), v)) for v in verdicts],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
