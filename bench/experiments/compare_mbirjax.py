"""Our CPU projectors and mbirjax's, call by call in alternation, for ratios that survive a shared
machine's changing load.

pytest-benchmark (``bench/test_bench_projector.py::test_cpu_algorithms``) runs each implementation's
rounds back to back; on a machine shared with other jobs the load can change between two cases by
more than the ratio being measured. Here every call of ours is followed by the same call of
mbirjax (the ``--serve`` peer of ``bench/experiments/peers/mbirjax_projector.py``), and the ratio is taken per
adjacent pair; the median over pairs is the figure, the spread shows the noise.

    python bench/experiments/compare_mbirjax.py --mbirjax-python /work/venv-mbirjax/bin/python \\
        --n 128 --threads 1 2 --pairs 5 --out bench/results/mbirjax_interleaved_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent  # bench/experiments
BENCH = ROOT.parent  # the timing suites: test_bench_projector.py


def _geometry(n: int):
    sys.path.insert(0, str(BENCH))
    from test_bench_projector import geometry  # the bench's geometry, not a copy

    return geometry(n)


class Peer:
    """The mbirjax peer process for one (n, threads): started and compiled once."""

    def __init__(self, exe: str, n: int, threads: int):
        self.proc = subprocess.Popen([exe, str(ROOT / "peers" / "mbirjax_projector.py"), "--serve", "--n", str(n),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the mbirjax peer did not start (exit code {self.proc.wait()})")
        self.info = json.loads(line)

    def call(self, direction: str) -> tuple[float, float]:
        """Wall time of one call as seen from here (pipe round trip included, < 1 ms), and the
        CPU time the peer process spent in it."""
        t0 = time.perf_counter()
        self.proc.stdin.write(direction + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if not answer or answer[0] != "ok":
            raise RuntimeError(f"mbirjax peer: {answer}")
        return time.perf_counter() - t0, float(answer[2])

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mbirjax-python", default=os.environ.get("U3D_MBIRJAX_PYTHON"),
                   help="interpreter with mbirjax (default: $U3D_MBIRJAX_PYTHON)")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pairs", type=int, default=5, help="alternating pairs per direction (back)")
    p.add_argument("--forward-pairs", type=int, default=2, help="pairs for the forward (mbirjax's is slow)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not args.mbirjax_python or not Path(args.mbirjax_python).exists():
        raise SystemExit("give --mbirjax-python (or set U3D_MBIRJAX_PYTHON) to an interpreter with mbirjax")
    if args.pairs < 1 or args.forward_pairs < 0 or args.n < 2:
        raise SystemExit("pairs must be >= 1, forward-pairs >= 0, n >= 2")

    from unrolled3d.ops import cone_backproject, cone_project

    g = _geometry(args.n)
    gen = torch.Generator().manual_seed(0)
    data = {"forward": torch.rand((1, 1, *g.vol_shape), generator=gen),
            "back": torch.rand((1, 1, *g.sino_shape), generator=gen)}
    ours = {"forward": cone_project, "back": cone_backproject}
    result = {"n": args.n, "n_views": args.n, "load_before": os.getloadavg(), "torch": torch.__version__,
              "cases": []}
    old_threads = torch.get_num_threads()
    for threads in args.threads:
        peer = Peer(args.mbirjax_python, args.n, threads)
        torch.set_num_threads(threads)
        try:
            for direction, pairs in (("back", args.pairs), ("forward", args.forward_pairs)):
                ours[direction](data[direction], g)  # warm-up (thread pool)
                rows = []
                for _ in range(pairs):
                    t0, c0 = time.perf_counter(), time.process_time()
                    ours[direction](data[direction], g)
                    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
                    t_peer, c_peer = peer.call(direction)
                    rows.append({"ours_s": t_ours, "mbirjax_s": t_peer, "ratio": t_peer / t_ours,
                                 "ours_cpu_s": c_ours, "mbirjax_cpu_s": c_peer, "cpu_ratio": c_peer / c_ours,
                                 "load1": os.getloadavg()[0]})
                if not rows:
                    continue
                ratios = [r["ratio"] for r in rows]
                case = {"threads": threads, "direction": direction, "pairs": rows,
                        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
                        "ours_min_s": min(r["ours_s"] for r in rows), "mbirjax_min_s": min(r["mbirjax_s"] for r in rows),
                        "mbirjax": peer.info}
                case["ours_gups"] = args.n**4 / case["ours_min_s"] / 1e9
                case["mbirjax_gups"] = args.n**4 / case["mbirjax_min_s"] / 1e9
                # CPU time: what each side consumed, whatever the waiting for a core on a loaded
                # machine (with more than one thread it sums the threads: a cost, not a speed).
                case["median_cpu_ratio"] = statistics.median(r["cpu_ratio"] for r in rows)
                case["ours_cpu_min_s"] = min(r["ours_cpu_s"] for r in rows)
                case["mbirjax_cpu_min_s"] = min(r["mbirjax_cpu_s"] for r in rows)
                result["cases"].append(case)
                print(f"{threads} thread(s) {direction}: wall ours {case['ours_min_s']:.3f} s, mbirjax "
                      f"{case['mbirjax_min_s']:.3f} s, ratio median {case['median_ratio']:.2f}x "
                      f"(range {case['min_ratio']:.2f}-{case['max_ratio']:.2f}, {len(rows)} pairs); CPU ours "
                      f"{case['ours_cpu_min_s']:.3f} s, mbirjax {case['mbirjax_cpu_min_s']:.3f} s, ratio median "
                      f"{case['median_cpu_ratio']:.2f}x", flush=True)
        finally:
            torch.set_num_threads(old_threads)
            peer.close()
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
