"""Raw dataset loaders: files on disk (or registry packages) -> records of uint8 images and targets.

`records` defines what every loader returns (`Labeled`, `Segmented`, `Captioned`); `know.data` turns those into the
training convention (device tensors, normalisation, sizes). Loaders never download in tests; each one's error
names what to download and where to put it.
"""
