"""What the actions share: the resolved sources and search space (setup), the evaluation session,
the trial loop, the evidence for a result, writing and registering a merge, the start of a study over
a trajectory, and the loop a DeepSpeed rank other than 0 runs (worker). Entry points stay in
``ckptmerge.actions``; nothing here imports them."""

from __future__ import annotations
