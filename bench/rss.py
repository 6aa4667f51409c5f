"""Peak memory of one `segment_raster` run, in a fresh process.

`python -m bench.rss SRC DST MODEL DEVICE` prints the peak resident set size in MB. It reads
VmHWM from /proc (reset by exec) rather than ru_maxrss, which Linux carries over from the
parent process that forked this one.
"""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str]) -> int:
    from roadseg_plugin.core.engine import segment_raster

    src, dst, model, device = argv
    segment_raster(src, dst, model, device=device)
    print(round(peak_rss_mb(), 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
