"""Peak memory of one run, in a fresh process.

`python -m bench.rss SRC DST MODEL DEVICE` prints the peak resident set size in MB of one
`segment_raster`; `python -m bench.rss --cli JSON ARGS...` runs `python -m roadseg_plugin ARGS...`
and `python -m bench.rss --in-memory JSON RASTER` runs `vectorise_raster` (every line held in one
frame, the reference for the streaming vectoriser), each writing {"rc", "seconds",
"peak_rss_mb"} to JSON. It reads VmHWM from /proc (reset by exec) rather than ru_maxrss, which
Linux carries over from the parent process that forked this one.
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


def _timed(out: str, work) -> int:
    import json
    import time

    start = time.perf_counter()
    rc = work()
    figures = {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(figures, fh)
    return rc


def main(argv: list[str]) -> int:
    if argv[:1] == ["--cli"]:
        from roadseg_plugin.cli.main import main as cli

        return _timed(argv[1], lambda: cli(argv[2:]))
    if argv[:1] == ["--in-memory"]:
        from roadseg_plugin.core.vectorise import vectorise_raster

        return _timed(argv[1], lambda: 0 if vectorise_raster(argv[2]) is not None else 1)
    from roadseg_plugin.core.engine import segment_raster

    src, dst, model, device = argv
    segment_raster(src, dst, model, device=device)
    print(round(peak_rss_mb(), 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
