"""Region-scale road extraction: many rasters, chunked, on a Dask cluster (local or remote).

`segment_region` (in `run`) gives the same probabilities and lines as running `segment` on each
input alone, spread over Dask workers:

- `plan`: the inputs (files, folders, globs) are checked and each is cut into chunks on the grid
  the engine reads (after resampling to the model's GSD). Chunk borders fall where a model tile
  starts, so a chunk predicts exactly the tiles of the whole-raster run that touch it and blends
  them with the whole raster's weights: its pixels equal the single-process ones.
- `chunk` (on the workers): one chunk -> one probability part, a compressed COG written under a
  temporary name and renamed; the model is loaded once per worker process.
- `stitch`: lines are made as `vectorise_raster` makes them: skeleton pieces per 1024 px block
  (on the workers, reading the neighbouring parts for the block halo), stitched by pixel
  position and cleaned once per input (one more task), so no road breaks at a chunk border.
- `job`: the Dask tasks and their bookkeeping; `run`: checks, cluster, outputs.
- `manifest`: what is finished (each part's sha256), the inputs, the model's hash and the
  options, for `--resume`.
- `parts`: the COG writer, the part mosaic reader and the VRT over the parts.
"""
from __future__ import annotations

from .run import RegionProgress, RegionResult, segment_region

__all__ = ["RegionProgress", "RegionResult", "segment_region"]
