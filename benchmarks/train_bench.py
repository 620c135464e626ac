"""Training benchmark: slices/s per model at 128×128, batch 32, one channel, and peak memory.

    python benchmarks/train_bench.py [--steps 15] [--device cpu] [--threads N]

Each model runs its real ``training_step`` (every optimiser update it does in training) on random
inputs in [0, 1]; the first steps are warm-up and not timed. The MSc project's ViT configuration
(``decoder="conv", noise_std=0``) runs in the same process for a side-by-side comparison. Each model is measured in
a fresh child process so its peak memory (max RSS) is its own.

Slices per CPU-second (the process's CPU time) is the figure to compare on a shared machine with
``--threads 1``: wall time there depends on what else runs, and with several threads the CPU time also
counts threads waiting for each other.

``--rounds N`` measures every configuration N times, round by round (each round all of them, one after the
other), and reports the median; the ratio to the MSc ViT is taken within each round (the same minutes of the
machine) and shown as its median and range: on this shared machine one run of one model varied by up to 1.8×.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    ("autoencoder", {}),
    ("autoencoder (full_res=norm, the earlier default)", {"full_res": "norm"}),
    ("autoencoder (spatial, the previous default)", {"bottleneck": "spatial"}),
    ("autoencoder (MSc dense, no noise)", {"bottleneck": "dense", "noise_std": 0.0}),
    ("vae", {}),
    ("gan", {}),  # f-AnoGAN: timed in its GAN phase (critic + generator); the encoder phase is cheaper
    ("ganomaly", {}),
    ("vit", {}),
    ("vit (MSc configuration)", {"decoder": "conv", "noise_std": 0.0}),
]
MSC_VIT = "vit (MSc configuration)"  # the reference every row is compared with


def measure(name: str, options: dict, steps: int, warmup: int, batch: int, size: int, device: str) -> dict:
    import resource

    import torch

    from uad.models import create_model

    torch.manual_seed(0)
    model_name = name.split(" ")[0]
    model = create_model(model_name, in_channels=1, image_size=size, **options).to(device).train()
    optimizers = model.configure_optimizers(1e-4)
    x = torch.rand(batch, 1, size, size, device=device)
    for _ in range(warmup):
        model.training_step(x, optimizers, 0.1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.training_step(x, optimizers, 0.1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "slices_per_s": steps * batch / elapsed,
        "slices_per_cpu_s": steps * batch / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every model this many times (median reported)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one configuration, print JSON
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        name, options = next(c for c in CONFIGS if c[0] == args.one)
        print(json.dumps(measure(name, options, args.steps, args.warmup, args.batch_size, args.image_size, args.device)))
        return
    rounds: list[list[dict]] = []
    for _ in range(max(1, args.rounds)):
        rows = []
        for name, _ in CONFIGS:
            cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rounds.append(rows)
    print(f"device {args.device}, batch {args.batch_size}, {args.image_size}×{args.image_size}, 1 channel, "
          f"{args.threads or 'default'} torch threads, median of {len(rounds)} round(s)\n")
    print("| model | params (M) | train slices/s | vs MSc ViT | slices per CPU-second | vs MSc ViT (CPU) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for i, (name, _) in enumerate(CONFIGS):
        runs = [r[i] for r in rounds]
        msc = [next(x for x in r if x["model"] == MSC_VIT) for r in rounds]

        def ratio(key: str) -> str:
            values = [run[key] / m[key] for run, m in zip(runs, msc)]
            mid = f"{statistics.median(values):.1f}×"
            return mid if len(values) == 1 else f"{mid} ({min(values):.1f}–{max(values):.1f})"

        print(f"| {name} | {runs[0]['params_m']:.2f} | {statistics.median(r['slices_per_s'] for r in runs):.0f} | "
              f"{ratio('slices_per_s')} | {statistics.median(r['slices_per_cpu_s'] for r in runs):.0f} | "
              f"{ratio('slices_per_cpu_s')} | {max(r['peak_rss_mb'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
