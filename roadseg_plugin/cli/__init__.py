"""The command line, `python -m roadseg_plugin` / `roadseg`: plain Python over the core, no QGIS.

`main` builds the parser and runs one command (signals, exit statuses, the libraries' output held
back); `options` holds what every command shares (the options generated from the core's
dataclasses, the exit statuses); `segment` the segment, vectorise, export-onnx and quantize
commands; `region` segment-region on Dask.
"""
