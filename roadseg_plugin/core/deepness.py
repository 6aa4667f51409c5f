"""The metadata Deepness (the QGIS deep-learning plugin, PUTvision/qgis-plugin-deepness) reads
from an ONNX model, for a RoadSeg model exported with `export-onnx --deepness`.

Deepness configures a run from the model file's metadata (each value JSON-encoded): the model
type, the class names, the ground resolution in centimetres per pixel, the tile size, the
overlap in percent of the tile, the standardisation it applies after dividing 8-bit values by
255, and the probability threshold. It needs the input's height and width fixed (its tile size
field is set from them); the batch may stay dynamic. RoadSeg's graph returns the road
probability (N, H, W), which Deepness takes as one sigmoid class ("road", with "background").

What Deepness cannot do: RoadSeg's radiometric normalisation (a raster whose colours lie
outside the training survey's is stretched onto it first) and non-8-bit stretching; Deepness
feeds 8-bit RGB as it is.
"""
from __future__ import annotations

import json
import math

from .model_meta import ModelMeta

CLASS_NAME = "road"


def deepness_metadata(meta: ModelMeta) -> dict[str, str]:
    """{metadata key: JSON value} that makes `meta`'s model a Deepness "Segmentor"."""
    per_255 = 255.0 * meta.input_scale  # RoadSeg feeds values x input_scale; Deepness values / 255
    values = {
        "model_type": "Segmentor",
        "class_names": {"0": CLASS_NAME},
        "resolution": meta.gsd_m * 100.0,  # centimetres per pixel
        "tile_size": int(meta.tile),
        "tiles_overlap": math.ceil(100.0 * meta.overlap / meta.tile),  # percent of the tile, at least RoadSeg's
        "standardization_mean": [m / per_255 for m in meta.mean],
        "standardization_std": [s / per_255 for s in meta.std],
        "seg_thresh": float(meta.threshold),
    }
    return {key: json.dumps(value) for key, value in values.items()}


def deepness_notes(meta: ModelMeta) -> list[str]:
    """What a Deepness user should know about this model (printed by export-onnx --deepness)."""
    notes = [f"Deepness: a Segmentor of one class ({CLASS_NAME}) at {meta.gsd_m * 100:g} cm/px, tiles of "
             f"{meta.tile} px fixed in the file, the first {meta.in_channels} band(s) of an 8-bit layer"]
    from .normalise import Radiometry

    if Radiometry.from_meta(meta).mode != "off":
        notes.append("Deepness feeds 8-bit values as they are: RoadSeg's own normalisation of unusual colours "
                     "(colour casts, haze, dark images) is not in the file; segment such imagery with RoadSeg")
    return notes
