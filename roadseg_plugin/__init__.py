"""RoadSeg QGIS plugin. Importing this package pulls in nothing from QGIS or torch, so
`python -m roadseg_plugin` works without QGIS and QGIS starts fast.

`classFactory` (called by the QGIS desktop and by qgis_process) first puts RoadSeg's own
package folder, `<profile>/python/roadseg-packages/py3.X` (see `install.packages`), at the front of
`sys.path`, before anything imports numpy or the other packages installed there.
"""

MIN_PYTHON = (3, 10)


def classFactory(iface):  # noqa: N802 (QGIS API name)
    import sys

    from qgis.core import QgsApplication

    from .install import packages

    packages.activate(QgsApplication.qgisSettingsDirPath())
    if sys.version_info < MIN_PYTHON:
        from .gui.plugin import UnsupportedPython

        return UnsupportedPython(iface, MIN_PYTHON)
    from .gui.plugin import RoadSegPlugin

    return RoadSegPlugin(iface)
