"""Four threads JPEG-encode and grey-convert the same video frame at once: prints "ok" unless PyAV's per-frame
converter crashes or hangs (what two questions taking the same newest frame do)."""

from __future__ import annotations

import threading

import av
import numpy as np

from encoders import JpegEncoder
from encoders.frames import to_array


def main() -> None:
    frame = av.VideoFrame.from_ndarray(
        np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8), format="rgb24"
    ).reformat(format="yuv420p")
    jpegs = [JpegEncoder(max_side=512), JpegEncoder(max_side=320)]

    def work(i: int) -> None:
        for _ in range(40):
            jpegs[i % 2].encode(frame)
            to_array(frame, size=(64, 36), out="gray")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ok")


if __name__ == "__main__":
    main()
