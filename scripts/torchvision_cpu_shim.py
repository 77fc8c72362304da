"""Make PyPI's CUDA-linked torchvision importable beside a CPU torch (DEVELOPING.md, "Facts about the CPU machines").

Its compiled ops cannot load, so torchvision's fake-kernel registrations for `nms`/`qnms`
fail at import. Defining the two op schemas first lets torchvision import; its Python
transforms (all the tests need) work, and the compiled ops stay unavailable.
Installed by scripts/setup_test_env.sh as a .pth hook that runs only when torchvision is imported.
"""
import importlib.abc
import sys


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        for op in ("nms", "qnms"):
            try:
                torch.library.define(
                    f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
            except RuntimeError:
                pass  # already defined (torchvision's own ops loaded after all)
        return None


sys.meta_path.insert(0, _Finder())
