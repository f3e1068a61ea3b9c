"""Adapters of pulse, one package per transport; found through the ``pulse.plugins`` entry points."""
