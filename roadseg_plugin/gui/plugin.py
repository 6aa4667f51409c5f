"""The QGIS plugin object: the "Segment roads" action (Raster menu + toolbar), "Install packages..."
(Plugins > RoadSeg) and the Processing provider.

Nothing here imports torch, rasterio or the core at module import time, so QGIS loads the plugin
fast and still loads it when those packages are missing: it then shows one line in the message
bar with an "Install packages..." button that opens the installer (`installer_dialog`). The
dialog and the task are imported when the user runs the action.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgis.core import Qgis, QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QPushButton

from ..log import PLUGIN_NAME, PROVIDER_ID, log

if TYPE_CHECKING:
    from .task import RoadSegTask

MENU = "&RoadSeg"
ACTION_TEXT = "Segment roads"
INSTALL_TEXT = "Install packages..."
TRAIN_TEXT = "Train model from drawn road lines..."
ICON_PATH = Path(__file__).resolve().parent.parent / "icon.png"


class RoadSegPlugin:
    """Created by `classFactory(iface)`; QGIS calls `initGui` on load and `unload` on unload."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.install_action: QAction | None = None
        self.train_action: QAction | None = None
        self.toolbar = None
        self.provider = None
        self.installer = None  # the open InstallerDialog
        self.message = None  # the message bar item about missing packages, while it is shown
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
            from ..processing.provider import RoadSegProvider
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
        self.install_action = QAction(INSTALL_TEXT, self.iface.mainWindow())
        self.install_action.setObjectName("roadsegInstallPackages")
        self.install_action.setToolTip("Install the Python packages RoadSeg needs into QGIS's Python")
        self.install_action.triggered.connect(self.open_installer)
        self.iface.addPluginToMenu(MENU, self.install_action)
        self.train_action = QAction(TRAIN_TEXT, self.iface.mainWindow())
        self.train_action.setObjectName("roadsegTrainFromLines")
        self.train_action.setToolTip("Teach the model your imagery from road lines you digitised (Processing)")
        self.train_action.triggered.connect(self.open_training)
        self.iface.addPluginToMenu(MENU, self.train_action)
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
        self._close_message()
        if self.installer is not None and not sip.isdeleted(self.installer):
            self.installer.cancel_install()
            self.installer.close()
        self.installer = None
        if self.train_action is not None:
            self.iface.removePluginMenu(MENU, self.train_action)
            self.train_action.triggered.disconnect(self.open_training)
            self.train_action.deleteLater()
            self.train_action = None
        if self.install_action is not None:
            self.iface.removePluginMenu(MENU, self.install_action)
            self.install_action.triggered.disconnect(self.open_installer)
            self.install_action.deleteLater()
            self.install_action = None
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
        """True when the CPU-inference packages import; otherwise show the one-line message
        with its "Install packages..." button (once: not again while it is still shown)."""
        from ..install import deps

        missing = deps.missing_dependencies()
        if not missing:
            return True
        if self._message_shown():
            return False
        text = deps.dependency_message(missing)
        log(text, Qgis.Warning)
        bar = self.iface.messageBar()
        item = bar.createMessage(PLUGIN_NAME, deps.short_message(missing))
        button = QPushButton(INSTALL_TEXT, item)
        button.setObjectName("roadsegInstallButton")
        button.setToolTip(text)
        button.clicked.connect(self.open_installer)
        item.layout().addWidget(button)
        bar.pushWidget(item, Qgis.Warning, 0)
        self.message = item
        return False

    def _message_shown(self) -> bool:
        item = self.message
        return item is not None and not sip.isdeleted(item) and item in self.iface.messageBar().items()

    def _close_message(self) -> None:
        if self._message_shown():
            self.iface.messageBar().popWidget(self.message)
        self.message = None

    def open_training(self) -> None:
        """Processing's "Train model from drawn road lines" dialog (the packages checked first)."""
        if not self.check_dependencies():
            return
        import processing

        processing.execAlgorithmDialog(f"{PROVIDER_ID}:trainfromlines", {})

    def open_installer(self) -> None:
        """Show the package installer (one window; brought to the front when already open)."""
        from .installer_dialog import InstallerDialog

        if self.installer is None or sip.isdeleted(self.installer):
            self.installer = InstallerDialog(parent=self.iface.mainWindow())
            self.installer.installed.connect(self._installed)
        self.installer.show()
        self.installer.raise_()
        self.installer.activateWindow()

    def _installed(self, ready: bool) -> None:
        """After an installation: drop the message once the packages work in this QGIS."""
        if ready:
            self._close_message()

    def check_geos(self) -> bool:
        """True when shapely works inside this QGIS; otherwise push one message with the fix.

        The wheels' own GEOS/GDAL/PROJ are isolated from QGIS's first (shapely#1186), exactly as
        the Processing algorithms do, so both entry points behave the same.
        """
        from ..install import deps

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
        from ..core.errors import RoadSegError
        from .task import RoadSegTask

        try:
            task = RoadSegTask(params, iface=self.iface)
        except (RoadSegError, ValueError) as exc:
            self.iface.messageBar().pushMessage(PLUGIN_NAME, str(exc), Qgis.Critical, 0)
            return None
        self.tasks = [t for t in self.tasks if t.outcome is None] + [task]
        QgsApplication.taskManager().addTask(task)
        return task


class UnsupportedPython:
    """Stands in for the plugin in a QGIS whose Python is older than `min_python` (what RoadSeg
    needs: `roadseg_plugin.MIN_PYTHON`, passed in by `classFactory`): one message."""

    def __init__(self, iface: Any, min_python: tuple[int, ...]) -> None:
        self.iface = iface
        self.min_python = min_python

    def initGui(self) -> None:  # noqa: N802 (QGIS API name)
        import sys

        text = (f"RoadSeg needs Python {'.'.join(map(str, self.min_python))} or newer; this QGIS runs Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}. Use a newer QGIS (on Windows 3.34.5 or newer).")
        log(text, Qgis.Critical)
        self.iface.messageBar().pushMessage(PLUGIN_NAME, text, Qgis.Critical, 0)

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API name)
        pass

    def unload(self) -> None:
        pass
