"""QGIS <-> core, shared by the desktop plugin (`gui`) and the Processing algorithms (`processing`),
no widgets: reading any raster layer (`qgis_reader`, `layers`), styling the layers RoadSeg adds
(`styles`), and the core's options and messages as QGIS shows them (`options`).
"""
