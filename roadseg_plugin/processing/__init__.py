"""RoadSeg's Processing provider (`roadseg`) and its algorithms, one per module.

Importing this package (or `provider`) needs only QGIS: torch and the core are imported when
an algorithm runs, so the provider registers even when dependencies are missing.
"""
