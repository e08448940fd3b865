"""conopt inside the training loops people already use.

Each integration is a module of its own, importable only when its framework is installed, and
installed with an extra of its own:

* :mod:`conopt.integrations.lightning`: constraints in a Lightning ``LightningModule``
  (``pip install torch-conopt[lightning]``);
* :mod:`conopt.integrations.accelerate`: constraints in a Hugging Face ``accelerate`` loop
  (``pip install torch-conopt[accelerate]``);
* :mod:`conopt.integrations.hf`: constraints in Hugging Face ``Trainer`` fine-tuning
  (``pip install torch-conopt[hf]``).

Importing this package imports none of the frameworks.
"""
