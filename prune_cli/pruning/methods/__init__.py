"""Registered pruning methods: one module per method, imported here so that they register."""

from prune_cli.registry import import_submodules

import_submodules(__name__)
