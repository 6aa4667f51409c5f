"""`make demo`: the main job end to end on the bundled sample, with the bundled model.

1. gives the sample crop a CRS and transform (a real georeferenced GeoTIFF),
2. `python -m roadseg_plugin segment` it: probability GeoTIFF + GeoPackage of road lines,
3. renders the probability map and a preview of the lines over the image as PNGs,
4. fine-tunes the model for 2 epochs on the sample, writing the GIF and the loss plot.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "samples" / "massachusetts_19678630_crop.png"
SAMPLE_MASK = ROOT / "samples" / "massachusetts_19678630_crop_mask.png"
# Illustrative georeferencing: Massachusetts State Plane (metres), 1 m pixels.
CRS, TRANSFORM = "EPSG:26986", from_origin(232000.0, 902000.0, 1.0, 1.0)


def georeference(src: Path, dst: Path) -> Path:
    with rasterio.open(src) as s:
        data = s.read()
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, crs=CRS, transform=TRANSFORM, tiled=True, compress="deflate")
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
    return dst


def probability_png(prob_tif: Path, png: Path) -> None:
    import imageio.v3 as iio

    with rasterio.open(prob_tif) as src:
        iio.imwrite(png, src.read(1, masked=True).filled(0).astype(np.uint8))


def preview_png(image_tif: Path, lines_path: Path, png: Path) -> int:
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with rasterio.open(image_tif) as src:
        rgb, bounds = np.moveaxis(src.read(), 0, -1), src.bounds
    lines = gpd.read_file(lines_path)
    fig, ax = plt.subplots(figsize=(10, 10))
    ax.imshow(rgb, extent=(bounds.left, bounds.right, bounds.bottom, bounds.top))
    if len(lines):
        lines.plot(ax=ax, color="#ff6a00", linewidth=1.6)
    ax.set_title(f"RoadSeg: {len(lines)} road lines, {lines.length.sum() / 1000:.1f} km")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return len(lines)


def sample_dataset(out: Path, size: int = 512) -> Path:
    """The sample cut into 4 image/mask tiles, so training can split by tile."""
    import imageio.v3 as iio

    image, mask = iio.imread(SAMPLE), iio.imread(SAMPLE_MASK)
    for d in ("images", "masks"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for i, (r, c) in enumerate([(0, 0), (0, size), (size, 0), (size, size)]):
        iio.imwrite(out / "images" / f"part{i}.png", image[r:r + size, c:c + size])
        iio.imwrite(out / "masks" / f"part{i}.png", mask[r:r + size, c:c + size])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "demo_output")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from roadseg_plugin.cli.main import main as roadseg
    from roadseg_plugin.core.checkpoint import BUNDLED_MODEL
    from training.train import TrainConfig, train_model

    tif = georeference(SAMPLE, out / "sample.tif")
    cmd = ["segment", str(tif), "--out", str(out / "roads.gpkg"), "--mask-out", str(out / "probability.tif")]
    if args.model:
        cmd += ["--model", str(args.model)]
    if roadseg(cmd) != 0:
        return 1
    probability_png(out / "probability.tif", out / "probability.png")
    n = preview_png(tif, out / "roads.gpkg", out / "preview.png")
    print(f"segmented {tif.name}: {n} road lines")

    run = out / "training_run"
    # fine-tune the model that just segmented the sample, so two epochs already show roads
    train_model(TrainConfig(data=sample_dataset(out / "sample_dataset"), out=run, init=args.model or BUNDLED_MODEL,
                            epochs=2, samples_per_epoch=16, batch_size=8, tile=256, val_fraction=0.25,
                            workers=0, description="make demo: 2 epochs on the sample crop"))
    print("\ndemo outputs:")
    for name in ("sample.tif", "probability.tif", "probability.png", "roads.gpkg", "preview.png",
                 "training_run/predictions.gif", "training_run/loss.png", "training_run/history.csv",
                 "training_run/best.pt"):
        print(f"  {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
