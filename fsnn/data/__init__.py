"""Datasets: the Yin-Yang generator (no files needed)."""

from fsnn.data.yinyang import Split as Split
from fsnn.data.yinyang import load_published_yinyang as load_published_yinyang
from fsnn.data.yinyang import yinyang as yinyang
from fsnn.data.yinyang import yinyang_splits as yinyang_splits
