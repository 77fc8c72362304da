#!/usr/bin/env python
"""The encoder benchmark on CUDA with CLIP in float16; exits 0 with "skipped: no CUDA" where there is no GPU.

    python scripts/bench_encoders_gpu.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install 'visual-agent[clip]')")
        return 0
    if not torch.cuda.is_available():
        print(f"skipped: no CUDA (torch {torch.__version__} sees no GPU)")
        return 0
    import bench_encoders

    print(f"CUDA device: {torch.cuda.get_device_name(0)}")
    return bench_encoders.main(["--device", "cuda", "--fp16", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
