"""Hooks that connect ckptmerge to training frameworks (see hf_trainer.py)."""
