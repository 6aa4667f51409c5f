"""One line telling the user when their imagery looks unlike the model's, and what to do.

A run that finds almost no roads over a sizeable area, or whose raster the radiometric
normalisation had to move far onto the model's training range, most likely met imagery the
model does not know (another sensor, resolution, region or season). The remedy is a short
fine-tune on roads the user draws, so the line names it and the time it takes.
"""
from __future__ import annotations

FEW_ROADS_KM_PER_KM2 = 0.3  # road length per area below this counts as "almost none" (rural areas have 1-3)
MIN_AREA_KM2 = 0.1  # smaller rasters can hold few roads by chance: judged only when nothing was found
FAR_RADIOMETRY = 2.0  # normalisation distance (`normalise.distance`); "auto" starts mapping at 1.0
REMEDY = ("teach it yours with Processing > RoadSeg > Train model from drawn road lines (digitise the roads of a "
          "few tiles; about 10 minutes on a CPU), or `python -m training finetune`")


def unfamiliar_imagery(length_km: float, area_km2: float | None, radiometry_distance: float | None) -> str | None:
    """The advice line, or None when the run looks like imagery the model knows."""
    reasons = []
    if area_km2 is not None and area_km2 > 0:
        density = length_km / area_km2
        if (area_km2 >= MIN_AREA_KM2 and density < FEW_ROADS_KM_PER_KM2) or length_km == 0:
            reasons.append(f"few roads found ({length_km:.2f} km over {area_km2:.2f} km²)")
    if radiometry_distance is not None and radiometry_distance > FAR_RADIOMETRY:
        reasons.append(f"its colours lie far from the model's training imagery (distance {radiometry_distance:.1f})")
    if not reasons:
        return None
    return f"this imagery looks unlike the model's: {' and '.join(reasons)}; if roads were missed, {REMEDY}"
