"""The Python packages RoadSeg needs inside QGIS: which are missing and what to say (`deps`), the
folder they go into and the pip commands that fill it (`packages`). Plain Python: no Qt, no QGIS,
none of the packages it checks; `scripts/install_plugin.py` uses it outside QGIS.
"""
