"""Ground sampling distance: metres per CRS unit and per pixel, in one place.

Every part of RoadSeg that turns map units into metres (the raster readers, the QGIS reader,
vectorising, training tiles) goes through here, so a US-feet or a lat/lon raster gets the same
answer everywhere.

A CRS may be given as anything `pyproj.CRS.from_user_input` accepts (a pyproj CRS, a WKT or
"EPSG:n" string, an EPSG integer, ...) or as a rasterio CRS, which is read without pyproj.
QGIS callers pass `crs.toWkt()` or an authid (see `qgis_reader.crs_string`).

Linear units use their conversion factor to metres (US survey foot 0.3048006096, international
foot 0.3048). Angular units (geographic CRSs) use the WGS84 ellipsoid's radii of curvature at
the given latitude: exact for the ellipsoid, where the older per-degree series used before was
off by up to ~1e-5 relative. Other ellipsoids differ from WGS84 by far less than a pixel.
Without a CRS (None), map units are taken as metres.

No torch or QGIS: pyproj is imported only when a non-rasterio CRS needs it.
"""
from __future__ import annotations

import math
from typing import Any

WGS84_A = 6378137.0  # semi-major axis, metres
WGS84_E2 = 6.69437999014e-3  # first eccentricity squared
LATITUDE_LIMIT = 89.9  # degrees; beyond, a degree of longitude shrinks towards 0 m
_DEGREE_RAD = math.pi / 180.0


def _unit(crs: Any) -> tuple[bool, float]:
    """(angular, factor): metres per unit for linear CRSs, degrees per unit for angular ones."""
    if crs is None:
        return False, 1.0
    if type(crs).__module__.startswith("rasterio"):  # fast path: rasterio answers without pyproj
        from rasterio.errors import CRSError

        try:
            _, factor = crs.units_factor
        except CRSError:  # a local/engineering CRS without a known unit
            return False, 1.0
        if crs.is_geographic:
            return True, (factor or _DEGREE_RAD) / _DEGREE_RAD
        return False, factor or 1.0
    from pyproj import CRS

    pcrs = CRS.from_user_input(crs)
    factor = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else None
    if pcrs.is_geographic:  # pyproj gives radians per angular unit
        return True, (factor or _DEGREE_RAD) / _DEGREE_RAD
    return False, factor or 1.0


def metres_per_degree(latitude: float) -> tuple[float, float]:
    """(east-west, north-south) metres per degree of longitude and latitude on WGS84.

    From the radii of curvature: the prime vertical N (times cos latitude) along a parallel,
    the meridional M along a meridian. `latitude` is clamped to +-LATITUDE_LIMIT.
    """
    phi = math.radians(max(-LATITUDE_LIMIT, min(LATITUDE_LIMIT, latitude)))
    w = 1.0 - WGS84_E2 * math.sin(phi) ** 2
    normal = WGS84_A / math.sqrt(w)
    meridional = WGS84_A * (1.0 - WGS84_E2) / w**1.5
    return normal * math.cos(phi) * _DEGREE_RAD, meridional * _DEGREE_RAD


def metres_per_unit(crs: Any, latitude: float = 0.0) -> tuple[float, float]:
    """(x, y) metres per unit of `crs` along its first (easting/longitude) and second axis.

    Linear units give the same factor twice (metre 1.0, US survey foot 0.3048006096, ...);
    angular units give metres per unit of longitude and of latitude at `latitude` (degrees;
    ignored for linear units). None means metres.
    """
    return _per_unit(*_unit(crs), latitude)


def _per_unit(angular: bool, factor: float, latitude: float) -> tuple[float, float]:
    if not angular:
        return factor, factor
    east, north = metres_per_degree(latitude)
    return east * factor, north * factor


def metres_to_crs_units(crs: Any, metres: float, latitude: float = 0.0) -> tuple[float, float]:
    """(x, y) lengths in `crs` units of a `metres` step east-west and north-south at `latitude`.

    The inverse of `metres_per_unit`, e.g. the pixel size in layer units at the model's GSD.
    """
    per_x, per_y = metres_per_unit(crs, latitude)
    return metres / per_x, metres / per_y


def centre_latitude(transform: Any, width: int, height: int) -> float:
    """The y coordinate of the raster centre (the latitude for a geographic CRS)."""
    return transform.d * width / 2 + transform.e * height / 2 + transform.f


def pixel_size_m(crs: Any, transform: Any, width: int, height: int) -> tuple[float, float]:
    """(x_m, y_m) metres per pixel along columns and along rows, at the raster centre.

    x_m is the ground length of one column step (the transform's (a, d) vector), y_m that of
    one row step ((b, e)), so rotated or sheared transforms are measured correctly. Degrees are
    converted at the centre latitude, each vector component with its own axis factor. With
    `crs` None, map units are taken as metres (pixel coordinates for an identity transform).
    """
    angular, factor = _unit(crs)  # parsed once: a WKT through pyproj is not free
    latitude = centre_latitude(transform, width, height) if angular else 0.0
    fx, fy = _per_unit(angular, factor, latitude)
    return (math.hypot(transform.a * fx, transform.d * fy),
            math.hypot(transform.b * fx, transform.e * fy))


def mean_gsd_m(crs: Any, transform: Any, width: int, height: int) -> float | None:
    """The mean of the column and row pixel sizes in metres; None without a CRS.

    Unlike `pixel_size_m`, no CRS means the ground size is unknown: callers store this as a
    raster's or a training tile's GSD, where guessing "metres" would mislead.
    """
    if crs is None:
        return None
    x_m, y_m = pixel_size_m(crs, transform, width, height)
    return (x_m + y_m) / 2


__all__ = ["LATITUDE_LIMIT", "WGS84_A", "WGS84_E2", "centre_latitude", "mean_gsd_m", "metres_per_degree",
           "metres_per_unit", "metres_to_crs_units", "pixel_size_m"]
