"""Datasets: the built-in synthetic scenes, VOC-layout folders, SBD, NYUDv2,
SIFT Flow, PASCAL-Context, and TFDS data sources.

Every dataset is a random-access *source*: ``len(source)`` and
``source[i] -> {'image': (H, W, 3) uint8 RGB, 'label': (H, W) uint8 class
indices with 255 = ignore, 'id': int32}``. Sources hold only paths and names,
so they pickle cheaply into grain worker processes; they decode on access.
"""
