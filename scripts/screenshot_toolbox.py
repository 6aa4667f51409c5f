"""Screenshot of the Processing toolbox dialog running Segment roads on a web map (XYZ) layer, in the
real QGIS desktop -> docs/screenshot_toolbox_xyz.png.

Usage:
    .venv/bin/python scripts/screenshot_toolbox.py [--out docs/screenshot_toolbox_xyz.png] [--keep]

All in a temporary folder: the sample image (samples/, put on its 1 m UTM grid near Boston) is cut
into an XYZ tile pyramid by gdal2tiles.py and served by `python -m http.server` on 127.0.0.1; QGIS
starts under Xvfb with the plugin installed (scripts/screenshot.py does the same for Segment roads),
adds the XYZ layer (Web Mercator), zooms to the image and opens Segment roads from the toolbox
(`processing.createAlgorithmDialog`) with the map view as its extent; the dialog's Run runs it, and
once it has finished the screen (map with the road lines, dialog with its log) is saved.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.screenshot import SCREEN, install_plugin, qgis_environment, run_desktop  # noqa: E402
from tests.plugin.web_map import (  # noqa: E402
    georeferenced_sample,
    sample_extent_3857,
    tile_pyramid,
    tile_server,
    xyz_source,
)

DEFAULT_OUT = ROOT / "docs" / "screenshot_toolbox_xyz.png"

STARTUP = r'''
# Run by QGIS (--code) inside the desktop application; written by scripts/screenshot_toolbox.py.
import json
import time
import traceback
from pathlib import Path

import qgis.utils
from qgis.core import QgsApplication, QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QDockWidget

CFG = json.loads(r"""__CONFIG__""")
STATE = {"stage": "started"}
_KEEP = {}


def save_state():
    Path(CFG["status"]).write_text(json.dumps(STATE, indent=2, default=str))


def quit_qgis():
    save_state()
    for dialog in _KEEP.values():
        dialog.close()
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(300, qgis.utils.iface.actionExit().trigger)


def guarded(fn):
    def wrapper(*args):
        try:
            fn(*args)
        except Exception:
            STATE["error"] = traceback.format_exc()
            quit_qgis()
    return wrapper


@guarded
def start():
    iface = qgis.utils.iface
    window = iface.mainWindow()
    window.setGeometry(0, 0, CFG["window"][0] - 700, CFG["window"][1])  # the dialog goes on its right
    for dock in window.findChildren(QDockWidget):
        if dock.objectName() in ("Browser", "ProcessingToolbox"):
            dock.hide()
    layer = iface.addRasterLayer(CFG["xyz"], "Aerial (XYZ tiles, EPSG:3857)", "wms")
    if layer is None or not layer.isValid():
        raise RuntimeError("could not add the XYZ layer")
    QgsProject.instance().setCrs(layer.crs())
    iface.mapCanvas().setExtent(QgsRectangle(*CFG["extent"]))
    iface.mapCanvas().refresh()
    import processing

    xmin, ymin, xmax, ymax = CFG["extent"]
    dialog = processing.createAlgorithmDialog("roadseg:segmentroads", {
        "INPUT": layer.id(), "EXTENT": f"{xmin},{xmax},{ymin},{ymax} [EPSG:3857]", "DEVICE": "cpu",
        "OUTPUT": "TEMPORARY_OUTPUT"})
    if dialog is None:
        raise RuntimeError("no toolbox dialog for roadseg:segmentroads (is the plugin loaded?)")
    _KEEP["dialog"] = dialog
    dialog.setGeometry(CFG["window"][0] - 695, 40, 690, CFG["window"][1] - 60)
    dialog.show()
    STATE["stage"] = "dialog"
    QTimer.singleShot(3000, run)


@guarded
def run():
    dialog = _KEEP["dialog"]
    STATE["stage"] = "running"
    STATE["started"] = time.time()
    save_state()
    dialog.runAlgorithm()
    QTimer.singleShot(1000, wait)


@guarded
def wait():
    dialog = _KEEP["dialog"]
    if dialog.results():
        STATE["stage"] = "finished"
        STATE["results"] = {k: str(v) for k, v in dialog.results().items()}
        STATE["seconds"] = time.time() - STATE["started"]
        STATE["log"] = dialog.textLog.toPlainText()[-3000:] if hasattr(dialog, "textLog") else ""
        STATE["layers"] = [l.name() for l in QgsProject.instance().mapLayers().values()]
        canvas = qgis.utils.iface.mapCanvas()
        canvas.setExtent(QgsRectangle(*CFG["extent"]))  # loading the results zoomed to the web map's world
        canvas.refreshAllLayers()
        QTimer.singleShot(8000, grab)  # the tiles come over HTTP
    elif time.time() - STATE["started"] > CFG["timeout_s"]:
        raise RuntimeError("Segment roads did not finish in time; log: "
                           + (dialog.textLog.toPlainText()[-2000:] if hasattr(dialog, "textLog") else ""))
    else:
        QTimer.singleShot(1000, wait)


@guarded
def grab():
    canvas = qgis.utils.iface.mapCanvas()
    canvas.waitWhileRendering()
    QgsApplication.processEvents()
    canvas.waitWhileRendering()
    shot = QApplication.primaryScreen().grabWindow(0, 0, 0, *CFG["window"])
    if not shot.save(CFG["out"]):
        raise RuntimeError(f"could not save {CFG['out']}")
    STATE["stage"] = "done"
    quit_qgis()


QTimer.singleShot(CFG["start_delay_ms"], start)
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--timeout", type=int, default=900, help="seconds before QGIS is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print it")
    args = parser.parse_args(argv)
    if shutil.which("xvfb-run") is None or shutil.which("qgis") is None or shutil.which("gdal2tiles.py") is None:
        parser.error("needs `qgis`, `xvfb-run` and `gdal2tiles.py` on PATH")

    work = Path(tempfile.mkdtemp(prefix="roadseg_toolbox_"))
    try:
        image = georeferenced_sample(work / "sample_utm19.tif")
        tiles = tile_pyramid(image, work / "tiles")
        profiles = work / "profiles"
        install_plugin(profiles / "profiles" / "default", work)
        status = work / "status.json"
        with tile_server(tiles) as url:
            config = {"xyz": xyz_source(url), "extent": list(sample_extent_3857(1024)), "out": str(args.out.resolve()),
                      "status": str(status), "window": list(SCREEN), "start_delay_ms": 3000,
                      "timeout_s": max(60, args.timeout - 120)}
            startup = work / "startup.py"
            startup.write_text(STARTUP.replace("__CONFIG__", json.dumps(config)))
            if not run_desktop(startup, profiles, qgis_environment([]), work, work / "qgis.log", args.timeout):
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
