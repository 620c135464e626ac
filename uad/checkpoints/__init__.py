"""Checkpoints: ``record`` reads and checks a checkpoint's description without torch; ``weights`` saves and
loads the model.
"""
