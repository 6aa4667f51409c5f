"""Screenshot of "Segment roads" in the real QGIS desktop -> docs/screenshot_segment_roads.png.

Usage:
    .venv/bin/python scripts/screenshot.py [--model M] [--out docs/screenshot_segment_roads.png] [--plain]
    (--plain: a PNG without georeferencing, e.g. --out docs/screenshot_plain_png.png)

What it does, all in a temporary folder (nothing is copied into the repository):
1. writes a GeoTIFF copy of a real Massachusetts tile (1 m/pixel, EPSG:26986, NAD83 / Massachusetts
   Mainland) -- the published tiles are plain PNGs without georeferencing;
2. installs the plugin into a fresh QGIS profile (scripts/install_plugin.py) and enables it;
3. starts QGIS under Xvfb with `--code startup.py`; the startup script loads the tile, starts the
   plugin's Segment roads task with the chosen model (the same `RoadSegPlugin.start` the dialog's
   Run button calls), waits for it, zooms, grabs the main window and quits QGIS;
4. checks the status the startup script wrote and exits non-zero when anything failed.

QGIS runs its own Python (/usr/bin/python3), so this interpreter's site-packages (torch, rasterio,
...) are put on its PYTHONPATH.

GEOS: inside the QGIS desktop the system GEOS is loaded first; the plugin loads the wheels'
compiled modules with RTLD_DEEPBIND so that shapely keeps its own GEOS (deps.isolate_native_libraries;
shapely/shapely#1186), and its Segment roads task refuses to start with a message when that did
not work. --pythonpath puts folders first on QGIS's PYTHONPATH (e.g. a shapely built for QGIS's GEOS).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "massachusetts-roads" / "train" / "images"
sys.path.insert(0, str(ROOT))
from roadseg_plugin.core.params import BUNDLED_MODEL as DEFAULT_MODEL  # noqa: E402 - after the path

DEFAULT_OUT = ROOT / "docs" / "screenshot_segment_roads.png"
DEFAULT_TILE = "19678630_15.png"  # suburban streets; its top-left 100 px hold no-data
DEFAULT_CROP = (100, 100, 800)  # row, column, size in pixels: all imagery, many roads
ORIGIN_26986 = (230000.0, 905000.0)  # a plausible upper-left corner in EPSG:26986 (metres)
SCREEN = (1600, 1000)

STARTUP = r'''
# Run by QGIS (--code) inside the desktop application; written by scripts/screenshot.py.
import json
import traceback
from pathlib import Path

import qgis.utils
from qgis.core import Qgis, QgsApplication, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QDockWidget

CFG = json.loads(r"""__CONFIG__""")
STATE = {"stage": "started"}
_KEEP = []


def save_state():
    Path(CFG["status"]).write_text(json.dumps(STATE, indent=2, default=str))


def quit_qgis():
    save_state()
    QgsProject.instance().removeAllMapLayers()  # files in /tmp count as temporary layers: no exit prompt
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(300, qgis.utils.iface.actionExit().trigger)
    QTimer.singleShot(10000, hard_exit)  # something (a dialog?) kept QGIS open


def hard_exit():
    from qgis.PyQt.QtWidgets import QApplication

    shot = QApplication.primaryScreen().grabWindow(0)
    shot.save(str(Path(CFG["status"]).with_name("at_exit.png")))
    STATE["exit"] = "QGIS did not close via File > Exit; stopped (see at_exit.png)"
    save_state()
    import os
    os._exit(0)


def guarded(fn):
    def wrapper(*args):
        try:
            fn(*args)
        except Exception:  # report everything, then leave QGIS
            STATE["error"] = traceback.format_exc()
            quit_qgis()
    return wrapper


@guarded
def start():
    iface = qgis.utils.iface
    window = iface.mainWindow()
    window.setGeometry(0, 0, *CFG["window"])  # Xvfb has no window manager to maximise it
    plugin = qgis.utils.plugins.get("roadseg_plugin")
    if plugin is None:
        raise RuntimeError(f"roadseg_plugin is not loaded; loaded plugins: {sorted(qgis.utils.plugins)}")
    STATE["plugin_action"] = plugin.action.text() if plugin.action else None
    layer = iface.addRasterLayer(CFG["raster"], CFG["layer_name"])
    if layer is None or not layer.isValid():
        raise RuntimeError(f"could not load {CFG['raster']}")
    if layer.crs().isValid():
        QgsProject.instance().setCrs(layer.crs())
    iface.setActiveLayer(layer)
    STATE["raster_id"] = layer.id()
    for dock in window.findChildren(QDockWidget):  # more room for the map; keep the Layers panel
        if dock.objectName() == "Browser":
            dock.hide()
    iface.mapCanvas().setExtent(layer.extent())
    STATE["raster_crs"] = layer.crs().authid()

    from roadseg_plugin.core.params import InferenceParams, VectoriseParams
    from roadseg_plugin.gui.params import SegmentParams

    params = SegmentParams(layer_id=layer.id(), inference=InferenceParams(model=CFG["model"], device=CFG["device"]),
                           vectorise=VectoriseParams(**({} if CFG["min_length"] is None
                                                        else {"min_length": CFG["min_length"]})),
                           add_probability=CFG["probability"], layer_name="Roads (RoadSeg)")
    task = plugin.start(params)
    if task is None:
        raise RuntimeError("the plugin refused to start the task (see the message bar)")
    _KEEP.append(task)
    STATE["stage"] = "running"
    save_state()
    task.taskCompleted.connect(lambda: QTimer.singleShot(500, after_task))
    task.taskTerminated.connect(lambda: QTimer.singleShot(500, after_task))
    QTimer.singleShot(CFG["task_timeout_ms"], task_timeout)


@guarded
def task_timeout():
    if STATE["stage"] == "running":
        STATE["error"] = f"the task did not finish within {CFG['task_timeout_ms'] / 1000:.0f} s"
        _KEEP[0].cancel()
        quit_qgis()


@guarded
def after_task():
    if STATE["stage"] != "running":
        return
    task = _KEEP[0]
    outcome = task.outcome
    STATE["stage"] = "finished"
    STATE["outcome"] = {"status": outcome.status.value, "message": outcome.message,
                        "n_lines": outcome.n_lines, "total_length_m": outcome.total_length_m,
                        "seconds": outcome.seconds, "lines_path": outcome.lines_path,
                        "warnings": outcome.warnings}
    STATE["layers"] = {l.name(): l.crs().authid() for l in QgsProject.instance().mapLayers().values()}
    if not outcome.ok:
        raise RuntimeError(f"task {outcome.status.value}: {outcome.message}")
    iface = qgis.utils.iface
    canvas = iface.mapCanvas()
    raster = QgsProject.instance().mapLayer(STATE["raster_id"])
    canvas.setExtent(QgsRectangle(*CFG["zoom"]) if CFG["zoom"] else raster.extent())
    # QGIS's own "Task complete" notice sits on top of the plugin's summary: show only the summary.
    iface.messageBar().clearWidgets()
    iface.messageBar().pushMessage("RoadSeg", outcome.message, Qgis.Warning if outcome.warnings else Qgis.Success, 0)
    canvas.refreshAllLayers()
    QTimer.singleShot(1500, grab)


@guarded
def grab():
    canvas = qgis.utils.iface.mapCanvas()
    canvas.waitWhileRendering()
    QgsApplication.processEvents()
    canvas.waitWhileRendering()
    Path(CFG["out"]).parent.mkdir(parents=True, exist_ok=True)
    if not qgis.utils.iface.mainWindow().grab().save(CFG["out"]):
        raise RuntimeError(f"could not save {CFG['out']}")
    canvas.saveAsImage(CFG["canvas_out"])
    STATE["stage"] = "done"
    quit_qgis()


QTimer.singleShot(CFG["start_delay_ms"], start)
'''


def write_plain_image(png: Path, dst: Path, crop: tuple[int, int, int] | None) -> Path:
    """A PNG copy of `png` (or of its crop) without any georeferencing, as a photo or a scan is."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(png) as src:
        row, col, size = crop or (0, 0, max(src.width, src.height))
        w, h = min(size, src.width - col), min(size, src.height - row)
        data = src.read(window=Window(col, row, w, h))
    with rasterio.open(dst, "w", driver="PNG", width=w, height=h, count=data.shape[0], dtype=data.dtype) as out:
        out.write(data)
    return dst


def write_georeferenced_tile(png: Path, dst: Path, crop: tuple[int, int, int] | None) -> Path:
    """A GeoTIFF copy of `png` (or of its (row, col, size) crop) at 1 m in EPSG:26986."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    with rasterio.open(png) as src:
        row, col, size = crop or (0, 0, max(src.width, src.height))
        w, h = min(size, src.width - col), min(size, src.height - row)
        data = src.read(window=Window(col, row, w, h))
    x0, y0 = ORIGIN_26986
    with rasterio.open(dst, "w", driver="GTiff", width=w, height=h, count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:26986", transform=Affine(1.0, 0, x0, 0, -1.0, y0),
                       photometric="RGB" if data.shape[0] == 3 else "MINISBLACK") as out:
        out.write(data)
    return dst


def install_plugin(profile: Path, work: Path) -> None:
    """Package (scripts/package.py) and install (scripts/install_plugin.py) into `profile`.

    Before metadata.txt and those scripts exist, copy the package and enable it by hand.
    """
    scripts = ROOT / "scripts"
    if (ROOT / "metadata.txt").is_file() and (scripts / "install_plugin.py").is_file():
        dist = work / "dist"
        subprocess.run([sys.executable, str(scripts / "package.py"), "--out", str(dist), "--allow-missing-model"],
                       cwd=ROOT, check=True)
        package = next(dist.glob("roadseg_plugin-*.zip"))
        subprocess.run([sys.executable, str(scripts / "install_plugin.py"), "--profile", str(profile),
                        "--zip", str(package)], cwd=ROOT, check=True)
        return
    target = profile / "python" / "plugins" / "roadseg_plugin"
    shutil.copytree(ROOT / "roadseg_plugin", target, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    if not (target / "metadata.txt").is_file():  # QGIS only loads folders with a metadata.txt
        (target / "metadata.txt").write_text(
            "[general]\nname=RoadSeg\nqgisMinimumVersion=3.22\ndescription=Road extraction\n"
            "version=0.0.0\nauthor=RoadSeg\nemail=roadseg@example.org\nabout=Road extraction\n"
            "repository=https://example.org\nhasProcessingProvider=yes\n")
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    with ini.open("a") as fh:
        fh.write("\n[PythonPlugins]\nroadseg_plugin=true\n")


def qgis_environment(extra: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(p.resolve()) for p in extra]  # first: e.g. a shapely matching QGIS's GEOS
    paths += [p for p in site.getsitepackages() if Path(p).is_dir()]  # torch, rasterio, ... of this venv
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("QT_QPA_PLATFORM", None)  # a real X server (Xvfb), not offscreen
    env.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg_"))
    return env


def run_desktop(startup: Path, profiles: Path, env: dict[str, str], cwd: Path, log: Path, timeout: float,
                qgis: str = "qgis") -> bool:
    """Run the QGIS desktop under Xvfb with `startup` as its `--code` script, in its own session.

    Returns True when QGIS quit by itself within `timeout` seconds; otherwise stops xvfb-run,
    Xvfb and QGIS together and returns False.
    """
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", qgis,
           "--profiles-path", str(profiles), "--nologo", "--noversioncheck", "--code", str(startup)]
    print("running:", " ".join(cmd), flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: xvfb-run, Xvfb and QGIS
            proc.wait(timeout=60)
            return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="RoadSeg checkpoint (.pt)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--image", type=Path, default=DATA / DEFAULT_TILE, help="Massachusetts tile (PNG)")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("ROW", "COL", "SIZE"), default=DEFAULT_CROP,
                        help="use this square of the tile (default %(default)s; 0 0 1500 for all of it)")
    parser.add_argument("--zoom", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                        help="map extent (EPSG:26986) for the screenshot; default: the whole tile")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--min-length", type=float, help="minimum road line length (m); default: RoadSeg's")
    parser.add_argument("--probability", action="store_true", help="also add the probability raster")
    parser.add_argument("--plain", action="store_true",
                        help="a PNG without georeferencing instead of a GeoTIFF (lines over a plain image)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds before QGIS is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print it")
    parser.add_argument("--pythonpath", type=Path, action="append", default=[],
                        help="folder put first on QGIS's PYTHONPATH")
    args = parser.parse_args(argv)

    if not args.model.is_file():
        parser.error(f"model {args.model} not found (the bundled model is written by training; "
                     "pass --model /path/to/best.pt)")
    if not args.image.is_file():
        parser.error(f"image {args.image} not found; pass --image")
    if shutil.which("xvfb-run") is None or shutil.which("qgis") is None:
        parser.error("needs `qgis` and `xvfb-run` on PATH")

    env = qgis_environment(args.pythonpath)
    work = Path(tempfile.mkdtemp(prefix="roadseg_screenshot_"))
    try:
        if args.plain:
            raster = write_plain_image(args.image, work / f"{args.image.stem}.png", tuple(args.crop))
            name = f"{args.image.stem}.png (no georeferencing)"
        else:
            raster = write_georeferenced_tile(args.image, work / f"{args.image.stem}_epsg26986.tif", tuple(args.crop))
            name = f"Massachusetts {args.image.stem} (EPSG:26986)"
        profiles = work / "profiles"
        install_plugin(profiles / "profiles" / "default", work)
        status = work / "status.json"
        config = {
            "raster": str(raster), "layer_name": name,
            "model": str(args.model.resolve()), "device": args.device, "min_length": args.min_length,
            "probability": args.probability, "zoom": args.zoom, "out": str(args.out.resolve()),
            "canvas_out": str(work / "canvas.png"), "status": str(status), "window": list(SCREEN),
            "start_delay_ms": 3000, "task_timeout_ms": max(60, args.timeout - 60) * 1000,
        }
        startup = work / "startup.py"
        startup.write_text(STARTUP.replace("__CONFIG__", json.dumps(config)))
        if not run_desktop(startup, profiles, env, work, work / "qgis.log", args.timeout):
            print(f"QGIS did not quit within {args.timeout} s; stopped it", file=sys.stderr)
        state = json.loads(status.read_text()) if status.is_file() else {"error": "QGIS wrote no status"}
        print(json.dumps(state, indent=2))
        if state.get("stage") != "done":
            print(f"FAILED; QGIS log: {work / 'qgis.log'}", file=sys.stderr)
            print((work / "qgis.log").read_text()[-3000:], file=sys.stderr)
            args.keep = True
            return 1
        print(f"wrote {args.out}")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
