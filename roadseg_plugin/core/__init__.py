"""QGIS-free core: model, checkpoint, tiling, engine, vectoriser. Never imports qgis."""
