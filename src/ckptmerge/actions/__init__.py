"""The actions ``src/main.py`` dispatches to: search, merge, pilot, compare, promote."""

from __future__ import annotations
