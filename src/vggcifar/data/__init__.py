"""CIFAR-10 data: readers for both on-disk formats, splits and loaders."""

from .loader import DeviceLoader, classic_loader, random_crop, random_flip
from .sources import CifarData, detect_format, load_cifar10
from .splits import check_fraction, stratified_split

__all__ = ["CifarData", "DeviceLoader", "check_fraction", "classic_loader", "detect_format",
           "load_cifar10", "random_crop", "random_flip", "stratified_split"]
