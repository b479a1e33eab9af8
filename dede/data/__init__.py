from dede.data.datasets import KNOWN, DataNotFoundError, ImageSet, load_split
from dede.data.home import home_split
from dede.data.loaders import TensorBatches, make_loader

__all__ = ["KNOWN", "DataNotFoundError", "ImageSet", "load_split", "home_split", "TensorBatches", "make_loader"]
