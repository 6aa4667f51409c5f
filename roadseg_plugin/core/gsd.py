"""Ground sampling distance: metres on the ground per CRS unit, per pixel and along lines, in one place.

Every part of RoadSeg that turns map units into metres (the raster readers, the QGIS reader,
vectorising, training tiles) goes through here, so a US-feet, a lat/lon or a Web Mercator
raster gets the same answer everywhere.

Metres are true metres on the ground (the ellipsoid). A projected CRS's unit is a metre (or a
foot) on its grid only: the projection stretches the ground by its scale factor k, which varies
over the map (Web Mercator: k ~ 1 / cos(latitude), 1.35 at 42 N, so a "metre" there is 0.74 m
of ground; UTM: 0.9996 to about 1.001). So a projected CRS's metres per unit at a point are
its unit's metres divided by k there, along x and along y (`scale_factors`), and a line's length
is the sum of the geodesic lengths of its segments on the CRS's ellipsoid (`segment_lengths_m`).

A CRS may be given as anything `pyproj.CRS.from_user_input` accepts (a pyproj CRS, a WKT or
"EPSG:n" string, an EPSG integer, ...) or as a rasterio CRS, which is read without pyproj.
QGIS callers pass `crs.toWkt()` or an authid (see `qgis_reader.crs_string`).

Linear units use their conversion factor to metres (US survey foot 0.3048006096, international
foot 0.3048). Angular units (geographic CRSs) use the WGS84 ellipsoid's radii of curvature at
the given latitude: exact for the ellipsoid, where the older per-degree series used before was
off by up to ~1e-5 relative. Other ellipsoids differ from WGS84 by far less than a pixel.
Without a CRS (None), map units are taken as metres; so are those of a local (engineering) CRS.

No torch or QGIS: pyproj is imported only when a non-rasterio CRS or a projection needs it.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

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


# Where QGIS draws a raster without georeferencing (no CRS, no geotransform, no GCPs): x = column,
# y = -row, one unit per pixel. RoadSeg's outputs for such a raster use the same frame, so they
# overlay it in QGIS (GDAL's own default, y = +row, would put them above the image).
IMAGE_FRAME = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # affine a, b, c, d, e, f


def _crs_key(crs: Any) -> str | None:
    """A hashable spelling of `crs` for the caches below (None: no CRS)."""
    if crs is None:
        return None
    if isinstance(crs, str):
        return crs
    if isinstance(crs, int):
        return f"EPSG:{crs}"
    to_wkt = getattr(crs, "to_wkt", None)
    return to_wkt() if to_wkt is not None else str(crs)


@lru_cache(maxsize=32)
def _projection(key: str | None) -> Any:
    """(Transformer to the CRS's own geographic coordinates, its ellipsoid's Geod) of a projected
    CRS; None for no CRS, a geographic or local one, or one pyproj cannot take back to lon/lat."""
    if key is None:
        return None
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError

    try:
        pcrs = CRS.from_user_input(key)
        if pcrs.is_compound:
            pcrs = next((sub for sub in pcrs.sub_crs_list if sub.is_projected), pcrs)
        if not pcrs.is_projected or pcrs.geodetic_crs is None:
            return None
        geographic = pcrs.geodetic_crs
        return Transformer.from_crs(pcrs, geographic, always_xy=True), geographic.get_geod()
    except (CRSError, ProjError):
        return None


def scale_factors(crs: Any, x: float, y: float) -> tuple[float, float]:
    """(along x, along y): grid length over ground length at the point (x, y) of `crs`, the
    projection's scale factor (Web Mercator at 42 N: 1.35 both ways; UTM: 0.9996 on the central
    meridian). Measured, not from a formula: one unit east-west and north-south taken back to
    the CRS's ellipsoid (`segment_lengths_m`), so a projection that is conformal only on a
    sphere (Web Mercator on WGS84) is measured on the ellipsoid too. 1 for geographic, local or
    no CRSs, and outside the projection's domain."""
    if _projection(_crs_key(crs)) is None:
        return 1.0, 1.0
    _, factor = _unit(crs)
    ground = segment_lengths_m(crs, [[x - 0.5, y], [x, y - 0.5]], [[x + 0.5, y], [x, y + 0.5]])
    if not all(math.isfinite(g) and g > 0 for g in ground):
        return 1.0, 1.0
    return factor / float(ground[0]), factor / float(ground[1])


def metres_per_unit(crs: Any, y: float = 0.0, x: float | None = None) -> tuple[float, float]:
    """(x, y) ground metres per unit of `crs` along its first (easting/longitude) and second
    axis, at the point (x, y) in `crs` coordinates.

    Angular units give metres per unit of longitude and of latitude at latitude `y`; linear
    units their metres (metre 1.0, US survey foot 0.3048006096, ...) divided by the projection's
    scale factor at (x, y) (see the module notes). Without `x` a projected CRS gives its grid
    unit's metres (no scale factor): pass the point wherever lengths on the ground are meant.
    None means metres.
    """
    angular, factor = _unit(crs)
    if angular or x is None:
        return _per_unit(angular, factor, y)
    kx, ky = scale_factors(crs, x, y)
    return factor / kx, factor / ky


def _per_unit(angular: bool, factor: float, latitude: float) -> tuple[float, float]:
    if not angular:
        return factor, factor
    east, north = metres_per_degree(latitude)
    return east * factor, north * factor


def metres_to_crs_units(crs: Any, metres: float, y: float = 0.0, x: float | None = None) -> tuple[float, float]:
    """(x, y) lengths in `crs` units of a `metres` step on the ground east-west and north-south
    at the point (x, y) (see `metres_per_unit`).

    The inverse of `metres_per_unit`, e.g. the pixel size in layer units at the model's GSD.
    """
    per_x, per_y = metres_per_unit(crs, y, x)
    return metres / per_x, metres / per_y


def centre(transform: Any, width: int, height: int) -> tuple[float, float]:
    """(x, y) of the raster centre in its CRS (y: the latitude for a geographic CRS)."""
    return transform * (width / 2, height / 2)


def centre_latitude(transform: Any, width: int, height: int) -> float:
    """The y coordinate of the raster centre (the latitude for a geographic CRS)."""
    return centre(transform, width, height)[1]


def pixel_size_m(crs: Any, transform: Any, width: int, height: int) -> tuple[float, float]:
    """(x_m, y_m) ground metres per pixel along columns and along rows, at the raster centre.

    x_m is the ground length of one column step (the transform's (a, d) vector), y_m that of
    one row step ((b, e)), so rotated or sheared transforms are measured correctly. Each vector
    component gets its own axis factor at the centre: degrees at the centre latitude, a
    projection's scale factor at the centre point. With `crs` None, map units are taken as
    metres (pixel coordinates for an identity transform).
    """
    angular, factor = _unit(crs)  # parsed once: a WKT through pyproj is not free
    x, y = centre(transform, width, height)
    fx, fy = _per_unit(angular, factor, y) if angular else metres_per_unit(crs, y, x)
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


def segment_lengths_m(crs: Any, start: Any, end: Any) -> np.ndarray:
    """Ground lengths in metres of the segments start[i] -> end[i] ((N, 2) arrays in `crs`).

    Geographic and projected CRSs: the geodesic between the end points on the CRS's ellipsoid
    (a projected CRS's points are taken back to its own geographic coordinates first), so Web
    Mercator and UTM lines measure what they measure on the ground. Local or no CRS: planar
    length times the unit's metres.
    """
    import numpy as np

    start, end = np.asarray(start, dtype=float).reshape(-1, 2), np.asarray(end, dtype=float).reshape(-1, 2)
    if not len(start):
        return np.zeros(0)
    angular, factor = _unit(crs)
    if angular:
        geod = _ellipsoid(_crs_key(crs))
        lon0, lat0, lon1, lat1 = start[:, 0] * factor, start[:, 1] * factor, end[:, 0] * factor, end[:, 1] * factor
    else:
        projection = _projection(_crs_key(crs))
        if projection is None:
            return np.hypot(*(end - start).T) * factor
        to_geographic, geod = projection  # lists: pyproj takes 1-element arrays for scalars
        lon0, lat0 = to_geographic.transform(start[:, 0].tolist(), start[:, 1].tolist())
        lon1, lat1 = to_geographic.transform(end[:, 0].tolist(), end[:, 1].tolist())
    lengths = geod.inv(np.asarray(lon0).tolist(), np.asarray(lat0).tolist(), np.asarray(lon1).tolist(),
                       np.asarray(lat1).tolist())[2]
    return np.asarray(lengths, dtype=float).reshape(-1)


@lru_cache(maxsize=8)
def _ellipsoid(key: str | None) -> Any:
    """The pyproj Geod of a geographic CRS (WGS84 when it names none)."""
    from pyproj import CRS, Geod

    return CRS.from_user_input(key).get_geod() or Geod(ellps="WGS84")


__all__ = ["IMAGE_FRAME", "LATITUDE_LIMIT", "WGS84_A", "WGS84_E2", "centre", "centre_latitude", "mean_gsd_m",
           "metres_per_degree", "metres_per_unit", "metres_to_crs_units", "pixel_size_m", "scale_factors",
           "segment_lengths_m"]
