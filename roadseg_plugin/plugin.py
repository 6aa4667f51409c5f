"""The QGIS plugin object: one "Segment roads" action (Raster menu + toolbar) and the Processing provider.

Nothing here imports torch, rasterio or the core at module import time, so QGIS loads the plugin
fast and still loads it when those packages are missing; the dialog and the task are imported
when the user runs the action.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

if TYPE_CHECKING:
    from .task import RoadSegTask

PLUGIN_NAME = "RoadSeg"
MENU = "&RoadSeg"
ACTION_TEXT = "Segment roads"
ICON_PATH = Path(__file__).resolve().parent / "icon.png"


def log(message: str, level: Any = Qgis.Info) -> None:
    """Write to the RoadSeg tab of the QGIS log panel (safe from any thread)."""
    QgsMessageLog.logMessage(message, PLUGIN_NAME, level)


class RoadSegPlugin:
    """Created by `classFactory(iface)`; QGIS calls `initGui` on load and `unload` on unload."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.toolbar = None
        self.provider = None
        self.tasks: list[RoadSegTask] = []  # keep Python wrappers alive while tasks run

    # ---------------------------------------------------------------- lifecycle
    def initProcessing(self) -> None:  # noqa: N802 (QGIS API name)
        """Register the Processing provider; its algorithms report missing dependencies themselves.

        QGIS calls this itself for qgis_process (hasProcessingProvider=yes); `initGui` calls it
        too, so a second call does nothing.
        """
        if self.provider is not None:
            return
        try:
            from .processing.provider import RoadSegProvider
        except ImportError as exc:  # the provider itself must not need torch; say so if it does
            log(f"Processing provider not available: {exc}", Qgis.Warning)
            return
        provider = RoadSegProvider()
        if QgsApplication.processingRegistry().addProvider(provider):
            self.provider = provider
        else:  # an id clash: leave the registered one alone (removeProvider works by id)
            log(f"a Processing provider with id '{provider.id()}' is already registered", Qgis.Warning)

    def initGui(self) -> None:  # noqa: N802 (QGIS API name)
        """Add the action to the Raster menu and the RoadSeg toolbar, register Processing."""
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON_PATH)), ACTION_TEXT, self.iface.mainWindow())
        self.action.setObjectName("roadsegSegmentRoads")
        self.action.setToolTip("Segment roads: extract road lines from an aerial image layer")
        self.action.triggered.connect(self.run)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.toolbar = self.iface.addToolBar(PLUGIN_NAME)
        self.toolbar.setObjectName("RoadSegToolbar")
        self.toolbar.addAction(self.action)
        self.check_dependencies()

    def unload(self) -> None:
        """Undo `initGui`: menu entry, toolbar, action and provider; cancel tasks still running."""
        for task in self.tasks:
            if task.outcome is None:
                try:
                    task.cancel()
                except RuntimeError:  # the task manager already deleted it
                    pass
        self.tasks = []
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            if self.toolbar is not None:
                self.toolbar.removeAction(self.action)
            self.action.triggered.disconnect(self.run)
            self.action.deleteLater()
            self.action = None
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # ---------------------------------------------------------------- actions
    def check_dependencies(self) -> bool:
        """True when torch & co. import; otherwise push one message with the install command."""
        from . import deps

        missing = deps.missing_dependencies()
        if not missing:
            return True
        message = deps.dependency_message()
        command = deps.install_command()
        if command not in message:
            message = f"{message} Install them with: {command}"
        log(message, Qgis.Warning)
        self.iface.messageBar().pushMessage(PLUGIN_NAME, message, Qgis.Warning, 0)
        return False

    def check_geos(self) -> bool:
        """True when shapely works inside this QGIS; otherwise push one message with the fix.

        The wheels' own GEOS/GDAL/PROJ are isolated from QGIS's first (shapely#1186), exactly as
        the Processing algorithms do, so both entry points behave the same.
        """
        from . import deps

        deps.isolate_native_libraries()
        problem = deps.native_library_problem()
        if not problem:
            return True
        log(problem, Qgis.Critical)
        self.iface.messageBar().pushMessage(PLUGIN_NAME, problem, Qgis.Critical, 0)
        return False

    def run(self) -> None:
        """Open the Segment roads dialog; on OK start a background task."""
        if not self.check_dependencies() or not self.check_geos():  # before the user fills the dialog
            return
        from .dialog import SegmentDialog

        dialog = SegmentDialog(self.iface, parent=self.iface.mainWindow())
        if not dialog.exec_():
            return
        self.start(dialog.params())

    def start(self, params: Any) -> RoadSegTask | None:
        """Start segmenting in the QGIS task manager; returns the task (None if it could not start)."""
        if not self.check_geos():  # here, so every caller (dialog, scripts, console) gets the check
            return None
        from .core.errors import RoadSegError
        from .task import RoadSegTask

        try:
            task = RoadSegTask(params, iface=self.iface)
        except (RoadSegError, ValueError) as exc:
            self.iface.messageBar().pushMessage(PLUGIN_NAME, str(exc), Qgis.Critical, 0)
            return None
        self.tasks = [t for t in self.tasks if t.outcome is None] + [task]
        QgsApplication.taskManager().addTask(task)
        return task

