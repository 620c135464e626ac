"""Run folders, one per training run and the single source of truth for its state (``folders``), what the
user calls a run (``meta``), archiving (``archive``) and listing (``listing``). Torch-free.
"""
