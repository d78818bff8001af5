"""Datasets: the Yin-Yang generator (no files needed) and MNIST / Fashion-MNIST through TFDS."""

from fsnn.data.images import DataError as DataError
from fsnn.data.images import encode_images as encode_images
from fsnn.data.images import load_images as load_images
from fsnn.data.yinyang import Split as Split
from fsnn.data.yinyang import load_published_yinyang as load_published_yinyang
from fsnn.data.yinyang import yinyang as yinyang
from fsnn.data.yinyang import yinyang_splits as yinyang_splits
