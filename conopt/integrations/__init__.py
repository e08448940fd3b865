"""conopt inside the training loops people already use.

Each integration is a module of its own, importable only when its framework is installed, and
installed with an extra of its own:

* :mod:`conopt.integrations.lightning`: constraints in a Lightning ``LightningModule``
  (``pip install torch-conopt[lightning]``).

Importing this package imports none of the frameworks.
"""
