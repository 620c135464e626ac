"""The bottom layer, imported by every other: errors, atomic files, paths, processes, worker pools, devices.
Nothing here imports another part of uad.
"""
