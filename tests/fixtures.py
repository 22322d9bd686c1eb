"""Paths of the real-data excerpts committed in tests/data (provenance and checksums: tests/data/README.md)."""

import os

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
MNIST_DIR = os.path.join(DATA, "mnist")  # first 500 train / 200 test images of MNIST
VOWELS_DIR = os.path.join(DATA, "japanese-vowels")  # 6 train / 4 test utterances per speaker
CALTECH_DIR = os.path.join(DATA, "caltech101", "101_ObjectCategories")  # 10 images in each of 3 classes, 4 in BACKGROUND_Google
CALTECH_CLASSES = ("Motorbikes", "airplanes", "wrench")  # sorted as scan_image_folder lists them, BACKGROUND_Google excluded
