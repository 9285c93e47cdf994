"""``action=watch``: merge adjacent checkpoints as a training run writes them (see actions/watch.py)."""
