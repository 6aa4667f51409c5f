"""Writers: each format round-trips with its CRS and fields, atomically, with clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine

from roadseg_plugin.core.errors import OutputError
from roadseg_plugin.core.vector_io import driver_for, write_lines
from roadseg_plugin.core.vectorise import FIELDS, vectorise_mask

UTM = Affine(0.6, 0.0, 330000.0, 0.0, -0.6, 4690000.0)


@pytest.fixture(scope="module")
def roads() -> gpd.GeoDataFrame:
    mask = np.zeros((120, 120), bool)
    mask[57:64, 10:110] = True
    mask[10:110, 57:64] = True
    gdf = vectorise_mask(mask, UTM, "EPSG:32619", prob=np.where(mask, 0.75, 0.0), min_length=5)
    assert len(gdf) == 4
    return gdf


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["roads.gpkg", "roads.shp", "roads.geojson", "roads.json", "roads.fgb"])
def test_round_trip_keeps_crs_fields_and_lines(tmp_path, roads, name):
    out = write_lines(roads, tmp_path / name)
    assert out == tmp_path / name
    back = gpd.read_file(out, engine="pyogrio").sort_values("id").reset_index(drop=True)  # fgb: spatial order
    assert back.crs.to_epsg() == 32619
    assert list(back.columns) == [*FIELDS, "geometry"]
    assert len(back) == 4 and set(back.geom_type) == {"LineString"}
    assert list(back["id"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(back["length_m"], roads["length_m"])
    np.testing.assert_allclose(back["mean_prob"].astype(float), 0.75)
    assert all(a.equals_exact(b, 1e-6) for a, b in zip(back.geometry, roads.geometry, strict=True))
    assert not [n for n in only(tmp_path) if n.startswith(".")]  # no temporary leftovers


def test_driver_aliases_and_names(tmp_path, roads):
    assert driver_for("a.GPKG") == "GPKG"
    assert driver_for("a.out", "fgb") == "FlatGeobuf"
    assert driver_for("a.shp", "esri shapefile") == "ESRI Shapefile"
    assert driver_for("a.json") == driver_for("a.geojson") == "GeoJSON"
    write_lines(roads, tmp_path / "layer.fgb.tmp", driver="fgb")
    assert pyogrio.read_info(tmp_path / "layer.fgb.tmp")["features"] == 4
    with pytest.raises(OutputError, match="must end in .shp"):
        write_lines(roads, tmp_path / "layer.fgb", driver="shp")


def test_shapefile_has_prj_sidecars_and_short_field_names(tmp_path, roads):
    write_lines(roads, tmp_path / "roads.shp")
    assert only(tmp_path) == ["roads.cpg", "roads.dbf", "roads.prj", "roads.shp", "roads.shx"]
    assert "UTM_Zone_19N" in (tmp_path / "roads.prj").read_text()
    assert gpd.read_file(tmp_path / "roads.shp").crs.to_epsg() == 32619
    assert list(pyogrio.read_info(tmp_path / "roads.shp")["fields"]) == list(FIELDS)


def test_overwriting_a_shapefile_drops_sidecars_of_the_old_layer(tmp_path, roads):
    write_lines(roads, tmp_path / "roads.shp")
    (tmp_path / "roads.qix").write_bytes(b"old spatial index")
    no_crs = gpd.GeoDataFrame(roads.drop(columns="geometry"), geometry=list(roads.geometry))
    with pytest.warns(UserWarning, match="crs"):
        write_lines(no_crs, tmp_path / "roads.shp")
    assert "roads.prj" not in only(tmp_path) and "roads.qix" not in only(tmp_path)
    assert gpd.read_file(tmp_path / "roads.shp").crs is None


@pytest.mark.parametrize("name", ["empty.gpkg", "empty.shp", "empty.fgb"])
def test_empty_result_writes_a_typed_empty_layer(tmp_path, roads, name, caplog):
    with caplog.at_level("WARNING"):
        write_lines(roads.iloc[:0], tmp_path / name)
    assert "no roads found; wrote an empty layer" in caplog.text
    info = pyogrio.read_info(tmp_path / name)
    assert info["features"] in (0, -1)  # FlatGeobuf reports -1 (unknown) for empty layers
    assert len(gpd.read_file(tmp_path / name)) == 0
    assert info["geometry_type"] == "LineString"
    assert list(info["fields"]) == list(FIELDS)
    assert gpd.read_file(tmp_path / name).crs.to_epsg() == 32619


def test_empty_geojson_is_valid_with_its_crs(tmp_path, roads):
    """GeoJSON has no schema, so an empty one keeps its CRS but cannot list fields."""
    write_lines(roads.iloc[:0], tmp_path / "empty.geojson")
    back = gpd.read_file(tmp_path / "empty.geojson")
    assert len(back) == 0 and back.crs.to_epsg() == 32619


def test_unknown_extension_names_the_file_and_lists_formats(tmp_path, roads):
    with pytest.raises(OutputError) as err:
        write_lines(roads, tmp_path / "roads.kml")
    assert "roads.kml" in str(err.value) and "gpkg" in str(err.value) and ".fgb" in str(err.value)
    with pytest.raises(OutputError, match="unknown vector format 'dxf'"):
        write_lines(roads, tmp_path / "roads.gpkg", driver="dxf")
    assert only(tmp_path) == []


def test_missing_or_unusable_folder_names_the_file(tmp_path, roads):
    with pytest.raises(OutputError, match="missing.*does not exist; create it"):
        write_lines(roads, tmp_path / "missing" / "roads.gpkg")
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="roads.gpkg"):
        write_lines(roads, blocker / "roads.gpkg")
    assert only(tmp_path) == ["file.txt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder(tmp_path, roads):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="roads.gpkg.*choose a folder you can write to"):
            write_lines(roads, folder / "roads.gpkg")
        assert only(folder) == []
    finally:
        folder.chmod(0o700)


def test_failed_write_leaves_the_previous_file_untouched(tmp_path, roads):
    target = tmp_path / "roads.gpkg"
    write_lines(roads, target)
    before = target.read_bytes()
    broken = roads.copy()
    broken["id"] = np.arange(4) * 1j  # complex numbers: no vector format takes them
    with pytest.raises(OutputError, match="roads.gpkg.*failed"):
        write_lines(broken, target)
    assert target.read_bytes() == before
    assert only(tmp_path) == ["roads.gpkg"]


def test_field_names_longer_than_ten_characters_are_refused(tmp_path, roads):
    with pytest.raises(OutputError, match="longer than 10"):
        write_lines(roads.rename(columns={"mean_prob": "mean_probability"}), tmp_path / "roads.shp")
    assert only(tmp_path) == []


def test_temporary_folder_is_named_after_the_target_and_the_process(tmp_path, roads, monkeypatch):
    seen = []
    original = gpd.GeoDataFrame.to_file

    def spy(self, path, *args, **kwargs):
        seen.append(Path(path))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", spy)
    write_lines(roads, tmp_path / "roads.gpkg")
    assert seen[0].name == "roads.gpkg"
    assert seen[0].parent.name.startswith(f".roads.gpkg.{os.getpid()}-") and seen[0].parent.name.endswith(".tmp")
    assert only(tmp_path) == ["roads.gpkg"]


def test_geopackage_without_its_spatial_index_is_a_failed_write(tmp_path, roads, monkeypatch):
    """GDAL builds the R-tree when it closes the file and says nothing when that fails (full disk)."""
    target = tmp_path / "roads.gpkg"
    write_lines(roads, target)
    before = target.read_bytes()
    original = gpd.GeoDataFrame.to_file
    monkeypatch.setattr(gpd.GeoDataFrame, "to_file",
                        lambda self, path, *a, **kw: original(self, path, *a, SPATIAL_INDEX="NO", **kw))
    with pytest.raises(OutputError, match=r"roads.gpkg: writing the GPKG layer failed \(the spatial index was not"):
        write_lines(roads, target)
    assert target.read_bytes() == before
    assert only(tmp_path) == ["roads.gpkg"]


def test_missing_features_are_a_failed_write(tmp_path, roads, monkeypatch):
    original = gpd.GeoDataFrame.to_file
    monkeypatch.setattr(gpd.GeoDataFrame, "to_file",
                        lambda self, path, *a, **kw: original(self.iloc[:2], path, *a, **kw))
    with pytest.raises(OutputError, match=r"roads.fgb: .*\(2 of 4 features were written\)"):
        write_lines(roads, tmp_path / "roads.fgb")
    assert only(tmp_path) == []


def test_gdal_messages_name_the_target_not_the_temporary(tmp_path, roads, monkeypatch):
    def fail(self, path, *args, **kwargs):
        raise RuntimeError(f"Failed to write features to dataset {path}\nsecond line")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", fail)
    with pytest.raises(OutputError) as err:
        write_lines(roads, tmp_path / "roads.fgb")
    assert f"(Failed to write features to dataset {tmp_path / 'roads.fgb'});" in str(err.value)
    assert ".tmp" not in str(err.value) and "second line" not in str(err.value)
