"""`make bench`: run every CPU benchmark in turn with its defaults (each prints medians and ratios).

GPU figures come from benchmarks/gpu.sh on a machine with CUDA.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = ("bench_infer.py", "bench_train.py", "bench_loader.py", "bench_metrics.py", "bench_batch_augment.py",
           "bench_prefix_cache.py")


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for name in SCRIPTS:
        print(f"\n=== {name}", flush=True)
        if subprocess.call([sys.executable, str(here / name)]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
