"""Adapters that let benchmark toolkits run the tracker.

* :mod:`runtime.integrations.got10k` - a ``got10k.trackers.Tracker`` subclass for the GOT-10k
  toolkit (``ExperimentOTB``, ``ExperimentGOT10k``, ...); needs the ``toolkits`` extra.
* :mod:`runtime.integrations.vot` - a TraX tracker entry for the VOT toolkit
  (``python -m runtime.integrations.vot``).

Nothing is imported here, so ``import runtime.integrations`` never needs a toolkit.
See ``runtime/integrations/README.md`` for set-up.
"""
