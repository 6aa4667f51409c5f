"""How QGIS knows RoadSeg: `PLUGIN_NAME` (the tab of the log panel, the title of its messages),
`PROVIDER_ID` (Processing's algorithm ids, "roadseg:<name>"), and `log`, which writes to that tab.

Imports QGIS and nothing of the plugin, so every QGIS-side module (the plugin object, the task,
the dialog, Processing) can use it without importing another.
"""
from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsMessageLog

PLUGIN_NAME = "RoadSeg"
PROVIDER_ID = "roadseg"  # algorithm ids are "roadseg:<name>"


def log(message: str, level: Any = Qgis.Info) -> None:
    """Write to the RoadSeg tab of the QGIS log panel (safe from any thread)."""
    QgsMessageLog.logMessage(message, PLUGIN_NAME, level)
