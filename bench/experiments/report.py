"""Render bench/results/*.json (pytest-benchmark) into Markdown tables and PNG plots.

Usage: ``.venv/bin/python bench/experiments/report.py`` (writes bench/results/report.md and *.png).
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"  # bench/results


def _load(name: str) -> list[dict]:
    path = RESULTS / name
    return json.loads(path.read_text())["benchmarks"] if path.exists() else []


def _machine(name: str) -> str:
    path = RESULTS / name
    if not path.exists():
        return "?"
    info = json.loads(path.read_text()).get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", "")
    return f"{info.get('node', '')} {cpu}".strip()


def run_label(name: str, benchmarks: list[dict] | None = None) -> str:
    """What ran the results of ``name``, from the file itself: the device (the GPU's name, or the
    CPU's brand), the threads, torch and the volume sizes the rows hold; never a fixed label.

    The threads and the device come from each row's ``extra_info`` where the case records them,
    else from the run's ``machine_info["unrolled3d"]`` (bench/conftest.py records it); a file that
    has neither says "threads not recorded".
    """
    path = RESULTS / name
    if not path.exists():
        return "?"
    data = json.loads(path.read_text())
    info = data.get("machine_info", {})
    env = info.get("unrolled3d", {})
    rows = [b.get("extra_info", {}) for b in (data.get("benchmarks", []) if benchmarks is None else benchmarks)]
    devices = sorted({str(e["device"]) for e in rows if e.get("device") not in (None, "cpu")
                      and not str(e["device"]).startswith("cuda")})
    gpu = ", ".join(devices) or (env.get("device") if env.get("device", "cpu") != "cpu" else "")
    parts = [gpu or f"CPU {info.get('cpu', {}).get('brand_raw', '?')}".strip()]
    if not gpu:
        threads = sorted({int(e["threads"]) for e in rows if isinstance(e.get("threads"), int)})
        if not threads and "threads" in env:
            threads = [int(env["threads"])]
        parts.append(f"{'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''}" if threads
                     else "threads not recorded")
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    sizes = sorted({int(e["size"]) for e in rows if isinstance(e.get("size"), int)})
    if sizes:
        parts.append("sizes " + ", ".join(f"{n}^3" for n in sizes))
    if env.get("quick"):
        parts.append("--quick")
    return "; ".join(parts)


def _gpu_files(suite: str) -> list[str]:
    """``<suite>_cuda_<gpu>.json`` result files, whatever the GPU."""
    return sorted(p.name for p in RESULTS.glob(f"{suite}_cuda*.json"))


def _ratio(e: dict) -> str:
    """The memory ratio of a row: blank when not measured, "unmeasured" when the probe was void."""
    if "mem_ratio" not in e or e["mem_ratio"] is None:
        return ""
    return "unmeasured" if e["mem_ratio"] != e["mem_ratio"] else f"{e['mem_ratio']:.2f}"  # NaN: void probe


def projector_table(benchmarks: list[dict], label: str) -> str:
    rows = ["| direction | size (n^3, n views, n x n detector) | implementation | time (ms) | GUPS | peak extra / (in+out) |",
            "|---|---|---|---|---|---|"]
    for b in sorted(benchmarks, key=lambda b: (b["extra_info"]["direction"], b["extra_info"]["size"], b["extra_info"]["impl"])):
        e = b["extra_info"]
        ratio = _ratio(e)
        extra = f" (vs ours: rel. diff {e['rel_diff_vs_unrolled3d']:.1e})" if "rel_diff_vs_unrolled3d" in e else ""
        rows.append(f"| {e['direction']} | {e['size']} | {e['impl']}{extra} | {b['stats']['min'] * 1e3:.1f} | "
                    f"{e['gups']:.3f} | {ratio} |")
    return f"### Projector, {label}\n\n" + "\n".join(rows) + "\n"


def speedups(benchmarks: list[dict], fast: str, slow: str) -> str:
    by = {}
    for b in benchmarks:
        e = b["extra_info"]
        by[(e["direction"], e["size"], e["impl"])] = b["stats"]["min"]
    lines = []
    for (d, n, impl), t in sorted(by.items()):
        if impl == fast and (d, n, slow) in by:
            lines.append(f"- {d} {n}^3: {fast} is {by[(d, n, slow)] / t:.2f}x {slow}'s throughput")
    return "\n".join(lines) + "\n"


def fused_table(benchmarks: list[dict], label: str = "") -> str:
    rows = ["| op | Triton GPU time (us) | eager GPU time (us) | speed-up | Triton GB/s | eager GB/s |",
            "|---|---|---|---|---|---|"]
    by = {}
    for b in benchmarks:
        name = b["name"].split("[")[1].rstrip("]")
        op, impl = name.rsplit("-", 1)
        by.setdefault(op, {})[impl] = b["extra_info"]
    for op, d in sorted(by.items()):
        if "triton" in d and "torch_eager" in d:
            t, e = d["triton"], d["torch_eager"]
            rows.append(f"| {op} | {t['gpu_ms_per_op'] * 1e3:.1f} | {e['gpu_ms_per_op'] * 1e3:.1f} | "
                        f"{e['gpu_ms_per_op'] / t['gpu_ms_per_op']:.2f}x | {t['GB_per_s']:.0f} | {e['GB_per_s']:.0f} |")
    problem = next((b["extra_info"]["problem"] for b in benchmarks if "problem" in b["extra_info"]), "")
    return (f"### Fused Triton ops vs PyTorch eager, {label} ({problem + '; ' if problem else ''}"
            "GPU time from CUDA-graph replay)\n\n" + "\n".join(rows) + "\n")


def normal_table(benchmarks: list[dict], label: str) -> str:
    rows = ["| volume | patch | operator | time (ms) | relative error of H on the patch | peak extra / (in+out) |",
            "|---|---|---|---|---|---|"]
    for b in sorted(benchmarks, key=lambda b: (b["extra_info"]["size"], b["extra_info"]["impl"])):
        e = b["extra_info"]
        rows.append(f"| {e['size']}^3 | {e['patch']}^3 | {'exact S A^T A S^T' if e['impl'] == 'exact' else 'H_p'} | "
                    f"{b['stats']['min'] * 1e3:.2f} | {e['rel_error_H']:.3f} | {_ratio(e)} |")
    return f"### Normal operator on a patch, {label}\n\n" + "\n".join(rows) + "\n"


def _mib(e: dict) -> str:
    if e.get("oom"):
        return "out of memory"
    peak = e.get("peak_extra_mib")
    return "unmeasured" if peak is None or peak != peak else f"{peak:.0f}"


def partition_table(benchmarks: list[dict], label: str) -> str:
    rows = ["| step | mode | volume | time (s) | peak extra memory (MiB) | full / this |", "|---|---|---|---|---|---|"]
    peak = {(b["extra_info"]["kind"], b["extra_info"]["mode"], b["extra_info"]["size"]): b["extra_info"]
            for b in benchmarks}
    for b in sorted(benchmarks, key=lambda b: (b["extra_info"]["kind"], b["extra_info"]["mode"], b["extra_info"]["size"])):
        e = b["extra_info"]
        full = peak.get((e["kind"], "full", e["size"]))
        ratio = (f"{full['peak_extra_mib'] / e['peak_extra_mib']:.1f}x" if full and not full.get("oom")
                 and not e.get("oom") and e["mode"] != "full" else "-")
        time_s = "-" if e.get("oom") else f"{b['stats']['min']:.2f}"
        rows.append(f"| {e['kind']} | {e['mode']} | {e['size']}^3 | {time_s} | {_mib(e)} | {ratio} |")
    notes = []
    for kind in ("train", "inference"):
        for mode in ("partitioned_exact", "partitioned_H"):
            pts = sorted((e["size"], e["peak_extra_mib"]) for (k, m, _), e in peak.items()
                         if k == kind and m == mode and not e.get("oom"))
            if len(pts) > 1:
                lo, hi = min(v for _, v in pts), max(v for _, v in pts)
                notes.append(f"- {kind}, {mode}: peak from {pts[0][0]}^3 to {pts[-1][0]}^3 spans "
                             f"{lo:.0f}-{hi:.0f} MiB (max/min {hi / lo:.2f}x)")
    return (f"### Full vs partitioned unrolled network (K=5, UNet3D base 8; patch 32^3; 30 views; {label})\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n")


def partition_plot(benchmarks: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ["train", "inference"]):
        for mode in ["full", "partitioned_exact", "partitioned_H"]:
            pts = sorted((b["extra_info"]["size"], b["extra_info"]["peak_extra_mib"]) for b in benchmarks
                         if b["extra_info"]["kind"] == kind and b["extra_info"]["mode"] == mode
                         and not b["extra_info"].get("oom"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=mode)
        ax.set_xlabel("volume edge (voxels)")
        ax.set_ylabel("peak extra memory (MiB)")
        ax.set_title(f"{kind} step" if kind == "train" else kind)
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _threads(machine: dict) -> str:
    """``"N thread(s)"`` from a case's recorded ``machine()``, or that it was not recorded."""
    n = machine.get("threads")
    return f"{n} thread{'s' if n != 1 else ''}" if isinstance(n, int) else "threads not recorded"


def partition_speed_table(benchmarks: list[dict]) -> str:
    """Interleaved partitioned-inference variants (``test_cpu_partition_speed``) and the Trainer
    memory sweep (``test_cpu_trainer_memory``) of bench/test_bench_partition_speed.py."""
    out = []
    speed = sorted((b for b in benchmarks if b["name"].startswith("test_cpu_partition_speed")),
                   key=lambda b: b["extra_info"]["size"])
    if speed:
        e0 = speed[0]["extra_info"]
        m = e0["machine"]
        variants = e0["interleaved"]
        out.append(f"### Partitioned inference: one-patch eager vs compile vs batched patches (demo model, K={e0['K']}, "
                   f"patch {e0['patch'][0]}^3, stride = patch, 1 sweep; {m['cpu']}, {_threads(m)}, torch {m['torch']})\n")
        head = " | ".join(f"{v} (s)" for v in variants)
        out.append(f"| volume | patches | {head} | " + " | ".join(f"{v} speed-up wall / CPU" for v in variants[1:])
                   + " | load (1 min) | max diff |")
        out.append("|---" * (3 + 2 * len(variants)) + "|")
        for b in speed:
            e = b["extra_info"]
            secs = " | ".join(f"{e['median_seconds'][v]:.2f}" for v in variants)
            cpu = e.get("cpu_speedup_median", {})
            ups = " | ".join(f"{e['speedup_median'][v]:.2f}x / **{cpu[v]:.2f}x**" if v in cpu
                             else f"{e['speedup_median'][v]:.2f}x / -" for v in variants[1:])
            loads = e["loadavg_1min_before_each_round"]
            diff = max(e["max_abs_diff_vs_baseline"].values())
            out.append(f"| {e['size']}^3 | {e['patches']} | {secs} | {ups} | {min(loads):.1f}-{max(loads):.1f} | {diff:.1e} |")
        out.append(f"\nMedian over {e0['rounds']} interleaved rounds (times: median wall; speed-ups: median of the "
                   "per-round ratios to eager_b1, of wall time and of the process's CPU time).\n")
    mem = sorted((b for b in benchmarks if b["name"].startswith("test_cpu_trainer_memory")),
                 key=lambda b: b["extra_info"]["size"])
    if mem:
        out.append("### deepinv.Trainer step with L_PART (PartitionedLoss): peak extra memory vs volume (patch 24^3)\n")
        out.append("| volume | peak extra (MiB) | volume (MiB) | measurements (MiB) | step time (s) |")
        out.append("|---|---|---|---|---|")
        for b in mem:
            e = b["extra_info"]
            out.append(f"| {e['size']}^3 | {e['peak_extra_mib']:.1f} | {e['volume_mib']:.2f} | "
                       f"{e['measurement_mib']:.2f} | {b['stats']['min']:.2f} |")
        out.append("")
    return "\n".join(out) + "\n"


def partition_speed_plot(benchmarks: list[dict], path: Path) -> None:
    """Speed-up per variant and size (left) and the Trainer step's peak memory (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = sorted((b["extra_info"] for b in benchmarks if b["name"].startswith("test_cpu_partition_speed")),
                   key=lambda e: e["size"])
    mem = sorted((b["extra_info"] for b in benchmarks if b["name"].startswith("test_cpu_trainer_memory")),
                 key=lambda e: e["size"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if speed:
        variants = speed[0]["interleaved"]
        width = 0.8 / len(speed)
        for i, e in enumerate(speed):
            ups = e.get("cpu_speedup_median", e["speedup_median"])
            axes[0].bar([j + i * width for j in range(len(variants))], [ups[v] for v in variants],
                        width, label=f"{e['size']}^3")
        axes[0].axhline(2.0, color="k", ls="--", lw=1, label="target 2x")
        axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], variants)
        axes[0].set_ylabel("speed-up over eager_b1 (median, CPU time)")
        axes[0].set_title(f"partitioned inference, CPU, {_threads(speed[0].get('machine', {}))}")
        axes[0].legend()
    if mem:
        axes[1].plot([e["size"] for e in mem], [e["peak_extra_mib"] for e in mem], "o-", label="Trainer step, L_PART")
        axes[1].set_ylim(0, 1.2 * max(e["peak_extra_mib"] for e in mem))
        axes[1].set_xlabel("volume edge (voxels)")
        axes[1].set_ylabel("peak extra memory (MiB)")
        axes[1].set_title("deepinv.Trainer step, patch 24^3")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mri_h_table(benchmarks: list[dict], label: str) -> str:
    """Exact patch ``A^H A`` vs the fitted complex H (and H with a cut kernel) on the same patch."""
    rows = ["| volume | coils | patch | operator | FFT grid | time (ms) | vs best exact | error on patch |",
            "|---|---|---|---|---|---|---|---|"]
    for b in sorted(benchmarks, key=lambda b: (b["extra_info"]["size"], b["extra_info"]["n_coils"],
                                               b["extra_info"]["patch"], b["extra_info"]["op"])):
        e = b["extra_info"]
        if not e["op"].startswith("patch"):
            continue
        name = {"patch_AHA": f"exact S A^H A S^T (coil chunk {e['chunk']})", "patch_H": "H",
                "patch_H_radius": f"H, kernel radius {e.get('kernel_radius')}"}[e["op"]]
        grid = "x".join(str(g) for g in e["fft_grid"]) if "fft_grid" in e else "-"
        speed = f"{e['speedup_vs_best_exact']:.1f}x" if "speedup_vs_best_exact" in e else "-"
        err = f"{e['rel_error_H_patch']:.3f}" if "rel_error_H_patch" in e else "-"
        rows.append(f"| {e['size']}^3 | {e['n_coils']} | {e['patch']}^3 | {name} | {grid} | "
                    f"{b['stats']['min'] * 1e3:.1f} | {speed} | {err} |")
    return f"### MRI: H vs the exact patch normal operator, {label}\n\n" + "\n".join(rows) + "\n"


def throughput_plot(series: dict[str, list[dict]], fused: list[dict], path: Path, fused_device: str = "GPU") -> None:
    """Left: projector throughput (GUPS) per implementation and size; right: fused-op speed-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for label, benchmarks in series.items():
        for direction, marker in (("forward", "o-"), ("back", "s--")):
            pts = sorted((b["extra_info"]["size"], b["extra_info"]["gups"], b["extra_info"]["impl"])
                         for b in benchmarks if b["extra_info"]["direction"] == direction)
            for impl in sorted({p[2] for p in pts}):
                xy = [(n, g) for n, g, i in pts if i == impl]
                ax.plot([n for n, _ in xy], [g for _, g in xy], marker, label=f"{label} {impl} {direction}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("volume edge n (n^3 voxels, n views)")
    ax.set_ylabel("GUPS (voxel x view updates / ns)")
    ax.set_title("projector throughput")
    ax.legend(fontsize=7)
    ax = axes[1]
    by: dict[str, dict] = {}
    for b in fused:
        op, impl = b["name"].split("[")[1].rstrip("]").rsplit("-", 1)
        by.setdefault(op, {})[impl] = b["extra_info"]["gpu_ms_per_op"]
    ops = [op for op in sorted(by) if {"triton", "torch_eager"} <= set(by[op])]
    ax.barh(ops, [by[op]["torch_eager"] / by[op]["triton"] for op in ops])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel(f"speed-up of the fused Triton op over PyTorch eager ({fused_device})")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def quality_table(path: Path) -> str:
    if not path.exists():
        return ""
    q = json.loads(path.read_text())
    c = q["config"]
    fdk = q["methods"]["FDK"]["mean_psnr"]
    rows = ["| method | mean PSNR (dB) | vs FDK (dB) | mean SSIM | training time (s) |", "|---|---|---|---|---|"]
    for name, r in q["methods"].items():
        ssim = f"{r['mean_ssim']:.3f}" if "mean_ssim" in r else "-"
        t = r.get("train_seconds")
        if t is None:
            train_s = "-"
        elif t != t:  # NaN: not trained here
            train_s = "shipped demo weights"
        else:
            train_s = f"{t:.0f}"
        gain = "-" if name == "FDK" else f"{r['mean_psnr'] - fdk:+.2f}"
        rows.append(f"| {name} | {r['mean_psnr']:.2f} | {gain} | {ssim} | {train_s} |")
    runs = q.get("runs")
    merged = ("" if not runs else "\nMerged from runs with the same problem and budget: " + "; ".join(
        f"{', '.join(r['methods'])} ({r['config']['threads']} thread(s))" for r in runs) + ".\n")
    h_err = q.get("H_relative_error")
    return (f"### Quality on {c['n_test']} held-out random-ellipsoid phantoms ({c['size']}^3, {c['views']} views, "
            f"noise {c['noise']}, patch {c['patch']}^3, {c['steps']} training steps each"
            + (f"; relative error of H: {h_err:.3f}" if h_err is not None else "") + ")\n\n"
            + "\n".join(rows) + "\n" + merged)


def _per_volume_gain(r: dict, hann: dict) -> str:
    """``+a / +b / ...``: the PSNR (whole) gain over FDK (Hann) on each held-out volume."""
    return " / ".join(f"{a['psnr_whole'] - b['psnr_whole']:+.2f}" for a, b in zip(r["per_volume"], hann["per_volume"]))


def _training(info: dict) -> str:
    """``N steps[, P weights][, fine-tuned from `name` (sha)]`` of a scored model or baseline: the
    size where the result records it, the file it started from where it was fine-tuned."""
    init = info.get("init")
    return (f"{info['steps']} steps" + (f", {info['parameters']:,} weights" if "parameters" in info else "")
            + (f", fine-tuned from `{Path(init['path']).name}` ({init['sha256'][:8]})" if init else ""))


def quality_real_table(path: Path) -> str:
    """The held-out real-volume tables of ``bench/experiments/quality_real.py`` (issue 17): one row per view
    count and method, PSNR/SSIM whole and central, gain over FDK (Hann) (mean and per volume); then
    the scored model file (``--shipped``) with the post-processing baseline if it was given."""
    if not path.exists():
        return ""
    q = json.loads(path.read_text())
    c, d = q["config"], q["data"]
    tests = ", ".join(Path(t).stem for t in d["test"])
    text = ""
    if q["views"] and not c.get("skip_trained"):  # an FDK-only run's table is in its model table below
        rows = ["| views | method | PSNR whole (dB) | vs FDK Hann | per volume | PSNR central (dB) | SSIM whole "
                "| SSIM central | training (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for views, v in q["views"].items():
            hann = v["methods"]["FDK (Hann)"]
            for name, r in v["methods"].items():
                t = r.get("train_seconds")
                rows.append(f"| {views} | {name} | {r['mean_psnr_whole']:.2f} | "
                            f"{r['mean_psnr_whole'] - hann['mean_psnr_whole']:+.2f} | {_per_volume_gain(r, hann)} | "
                            f"{r['mean_psnr_central']:.2f} | {r['mean_ssim_whole']:.3f} | {r['mean_ssim_central']:.3f} | "
                            f"{'-' if t is None else f'{t:.0f}'} |")
        text = (f"### Quality on held-out real volumes ({tests}; trained on {', '.join(d['train']) or '-'}"
                f"{' + textured phantoms' if d.get('textured_every') else ''}; {c['size']}^3, noise {c['noise']}, "
                f"patch {c['patch']}^3, **{c['steps']} training steps each: a short budget**)\n\n" + "\n".join(rows) + "\n")
    s = q.get("shipped")
    if s:
        m = s["methods"]
        hann = m["FDK (Hann)"]
        rows = ["| method | PSNR whole (dB) | vs FDK Hann | per volume | PSNR central (dB) | SSIM whole | SSIM central |",
                "|---|---|---|---|---|---|---|"]
        for name, r in m.items():
            rows.append(f"| {name} | {r['mean_psnr_whole']:.2f} | {r['mean_psnr_whole'] - hann['mean_psnr_whole']:+.2f} | "
                        f"{_per_volume_gain(r, hann)} | {r['mean_psnr_central']:.2f} | {r['mean_ssim_whole']:.3f} | "
                        f"{r['mean_ssim_central']:.3f} |")
        trained = s.get("trained_on") or {}
        what = (f"{trained['kind']} phantoms" if "kind" in trained else
                f"files ({', '.join(trained.get('paths', []))})")
        post = s.get("post_processing")
        # files from before the baseline's size was recorded have no "parameters"
        post_budget = f" (post-processing: {_training(post)})" if post else ""
        budget = f", {_training(s)}" + post_budget if "steps" in s else ""
        text += (f"\n`{Path(s['weights']).name}` (trained on {what}{budget}) on held-out {tests}, "
                 f"{s['size']}^3, {s['views']} views, noise {s['noise']}: "
                 f"{s['mean_gain_over_fdk_hann_db_whole']:+.2f} dB over FDK (Hann), per volume in order"
                 f"\n\n" + "\n".join(rows) + "\n")
    return text


def _peer_parameters(r: dict) -> str:
    """What a peer's row was run with: TV's lambda and iterations, MBIR's snr_db and sharpness, a
    model's training scan."""
    if "lambda" in r:
        return f"lambda {r['lambda']:g}, {r['iterations']} iterations"
    if "snr_db" in r:
        return f"snr_db {r['snr_db']:.1f}, sharpness {r['sharpness']:g}"
    if "trained_views" in r:
        return f"trained {r['trained_size']}^3, {r['trained_views']} views, {r['trained_steps']} steps"
    return ""


def quality_peers_table(path: Path) -> str:
    """``bench/experiments/quality_peers.py`` (issue 28): FDK, TV, MBIR and unrolled models on the
    held-out volumes, one row per view count and method (PSNR whole, gain over FDK Hann per volume,
    SSIM, CPU seconds per volume, parameters), the post-processing baseline quoted where the
    reference run is the same problem; the parameters were chosen on the validation volumes."""
    if not path.exists():
        return ""
    q = json.loads(path.read_text())
    c, d = q["config"], q["data"]
    rows = ["| views | method | PSNR whole (dB) | vs FDK Hann | per volume | SSIM whole | CPU s / volume | run with |",
            "|---|---|---|---|---|---|---|---|"]
    ref = q.get("reference") or {}
    for views, v in q["views"].items():
        hann = v["methods"]["FDK (Hann)"]
        methods = dict(v["methods"])
        quoted = {k: r for k, r in ref.items() if k.endswith("(quoted)")} if views == "30" and ref.get("same_problem") else {}
        for name, r in {**methods, **quoted}.items():
            cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "-"
            rows.append(f"| {views} | {name} | {r['mean_psnr_whole']:.2f} | {r['mean_psnr_whole'] - hann['mean_psnr_whole']:+.2f} "
                        f"| {_per_volume_gain(r, hann)} | {r['mean_ssim_whole']:.3f} | {cpu} | {_peer_parameters(r)} |")
        match = v.get("projector_match")
        if match:
            rows.append(f"| {views} | (mbirjax's projector vs ours: {100 * match['relative_difference']:.2f} % "
                        f"relative difference) | | | | | | |")
    return (f"\n### Classical peers on held-out real volumes ({', '.join(Path(t).stem for t in d['test'])}; "
            f"{c['size']}^3, noise {c['noise']}; TV and MBIR parameters chosen on {', '.join(Path(t).stem for t in d['val'])}"
            f"{'; from ' + Path(c['params_from']).name if c.get('params_from') else ''}; gains per volume in that order)"
            f"\n\n" + "\n".join(rows) + "\n")


def heads_ct_runs_table(paths: list[Path]) -> str:
    """Every scored ``heads_ct`` training run side by side (issue 17): one ``quality_real.py
    --skip-trained --shipped`` file per run (the unrolled model and the post-processing baseline
    trained beside it). FDK (Hann) once; a model row already shown (same weights, same figures) once."""
    files = [(path, json.loads(path.read_text())) for path in paths if path.exists()]
    if len(files) < 2:  # one run is the table above
        return ""
    first, test_files = files[0][1]["shipped"], files[0][1]["data"]["test"]
    tests = ", ".join(Path(t).stem for t in test_files)
    hann = first["methods"]["FDK (Hann)"]
    keys = ("size", "views", "noise", "patch")
    rows = ["| result file | method | weights | training | PSNR whole (dB) | vs FDK Hann | per volume | SSIM whole |",
            "|---|---|---|---|---|---|---|---|",
            f"| | FDK (Hann) | - | - | {hann['mean_psnr_whole']:.2f} | - | - | {hann['mean_ssim_whole']:.3f} |"]
    seen = set()
    for path, q in files:
        s = q["shipped"]
        if any(s[k] != first[k] for k in keys) or s["methods"]["FDK (Hann)"] != hann or q["data"]["test"] != test_files:
            raise ValueError(f"{path.name} scores another problem than {files[0][0].name}: not one table")
        post = s.get("post_processing") or {}
        for name, r in s["methods"].items():
            if name.startswith("FDK"):
                continue
            info = post if name == post.get("label") else s
            key = (info["weights"], r["mean_psnr_whole"])
            if key in seen:
                continue
            seen.add(key)
            method = name if info is post else "partitioned unrolled"  # quality_real.py calls any model "shipped"
            rows.append(f"| `{path.name}` | {method} | `{info['weights']}` | {_training(info)} | "
                        f"{r['mean_psnr_whole']:.2f} | {r['mean_psnr_whole'] - hann['mean_psnr_whole']:+.2f} | "
                        f"{_per_volume_gain(r, hann)} | "
                        f"{r['mean_ssim_whole']:.3f} |")
    return (f"\n### Every scored `heads_ct` training run ({first['size']}^3, {first['views']} views, noise "
            f"{first['noise']}, held out: {tests}, gains per volume in that order)\n\n" + "\n".join(rows) + "\n")


def _first(*names: str) -> str:
    """The first of these result files that exists (names written by `unrolled3d bench` first)."""
    return next((n for n in names if (RESULTS / n).exists()), names[-1])


def compat_table(benchmarks: list[dict], label: str) -> str:
    rows = ["| op | volume, views | native ConeBeamCT (ms) | compat.TomographyWithAstra (ms) | overhead |",
            "|---|---|---|---|---|"]
    for b in sorted(benchmarks, key=lambda b: (b["extra_info"]["op"], b["extra_info"].get("size", 0))):
        e = b["extra_info"]
        scan = f"{e['size']}^3, {e['n_views']} views" if "size" in e and "n_views" in e else "?"
        rows.append(f"| {e['op']} | {scan} | {e['native_s'] * 1e3:.1f} | {e['adapter_s'] * 1e3:.1f} | "
                    f"{100 * e['overhead']:+.1f} % |")
    return f"### deepinv drop-in overhead, {label}\n\n" + "\n".join(rows) + "\n"


def main(results: Path | None = None) -> str:
    """Write ``report.md`` (and plots) into ``results`` (default bench/results); return the text."""
    global RESULTS
    if results is not None:
        RESULTS = Path(results)
    out = ["# Benchmark report (generated by bench/experiments/report.py)\n"]
    cpu_file = _first("projector_cpu.json", "cpu_2core.json")
    cpu = [b for b in _load(cpu_file) if b["name"].startswith("test_cpu_projector")]
    if cpu:
        out.append(projector_table(cpu, run_label(cpu_file, cpu)))
        out.append(speedups(cpu, "cpp", "torch_twin"))
    gpu: list[dict] = []
    gpu_label = "GPU"
    for name in _gpu_files("projector"):
        gpu = _load(name)
        gpu_label = run_label(name).split(";")[0]
        out.append(projector_table(gpu, run_label(name)))
        out.append(speedups(gpu, "cuda", "astra"))
    fused: list[dict] = []
    fused_device = "GPU"
    for name in _gpu_files("fused"):
        fused = _load(name)
        fused_device = run_label(name).split(";")[0]
        out.append(fused_table(fused, run_label(name)))
    normal_file = _first("normal_cpu.json", "cpu_2core.json")
    cpu_normal = [b for b in _load(normal_file) if b["name"].startswith("test_cpu_patch_normal")]
    if cpu_normal:
        out.append(normal_table(cpu_normal, run_label(normal_file, cpu_normal)))
    for name in _gpu_files("normal"):
        out.append(normal_table(_load(name), run_label(name)))
    part = _load("partition_cpu.json")
    if part:
        out.append(partition_table(part, run_label("partition_cpu.json")))
        partition_plot(part, RESULTS / "partition_memory.png")
        out.append("![memory vs volume size](partition_memory.png)\n")
    for name in sorted(p.name for p in RESULTS.glob("partition_cuda*.json")):
        gpu_part = _load(name)
        if gpu_part:
            out.append(partition_table(gpu_part, run_label(name)))
    # `unrolled3d bench --suite partition_speed` writes both kinds into partition_speed_cpu.json; the
    # committed results keep the memory sweep in its own run (trainer_memory_cpu.json), preferred
    speed_run = _load("partition_speed_cpu.json")
    memory_run = _load("trainer_memory_cpu.json") or speed_run
    speed = ([b for b in speed_run if b["name"].startswith("test_cpu_partition_speed")]
             + [b for b in memory_run if b["name"].startswith("test_cpu_trainer_memory")])
    if speed:
        out.append(partition_speed_table(speed))
        partition_speed_plot(speed, RESULTS / "partition_speed.png")
        out.append("![partitioned inference speed-ups and Trainer memory](partition_speed.png)\n")
    mri_h = [b for b in _load("mri_cpu.json") if b["name"].startswith("test_cpu_mri_patch_normal_H")]
    if mri_h:
        out.append(mri_h_table(mri_h, run_label("mri_cpu.json", mri_h)))
    if cpu or gpu or fused:
        throughput_plot({"CPU": cpu, gpu_label: gpu}, fused, RESULTS / "throughput.png", fused_device)
        out.append("![projector throughput and fused-op speed-ups](throughput.png)\n")
    compat = _load("compat_cpu.json")
    if compat:
        out.append(compat_table(compat, run_label("compat_cpu.json")))
    out.append(quality_table(RESULTS / "quality_cbct.json"))
    out.append(quality_table(RESULTS / "quality_cbct_48.json"))
    out.append(quality_real_table(RESULTS / "quality_real.json"))
    out.append(quality_real_table(RESULTS / "quality_real_heads_ct.json"))
    # the shipped model's run first, then the run it was fine-tuned from (so that a model that other
    # files score again is labelled by its own run), then every other run scored the same way
    heads = [RESULTS / "quality_real_heads_ct.json", RESULTS / "quality_real_heads_ct_stage1.json"]
    heads += [p for p in sorted(RESULTS.glob("quality_real_heads_ct_*.json")) if p not in heads]
    out.append(heads_ct_runs_table(heads))
    for peers in sorted(RESULTS.glob("quality_real_peers_*.json")):
        out.append(quality_peers_table(peers))
    text = "\n".join(out)
    (RESULTS / "report.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main())
