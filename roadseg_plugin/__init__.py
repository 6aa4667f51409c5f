"""RoadSeg QGIS plugin. Importing this package pulls in nothing from QGIS or torch, so
`python -m roadseg_plugin` works without QGIS and QGIS starts fast."""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin import RoadSegPlugin

    return RoadSegPlugin(iface)
