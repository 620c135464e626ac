"""Job control, the top layer: training and evaluation started as background processes and watched from
their folders, and which run a viewer opens first. The app and the CLI both call this, so they cannot
disagree about what "running", "failed" or "cancelled" means.
"""
