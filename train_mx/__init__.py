"""Offline training in MXNet: network symbols, data sampling, the multi-domain trainer,
feature statistics for the online head."""

import runtime  # noqa: E402,F401  (MXNet's environment defaults: runtime/__init__.py)
