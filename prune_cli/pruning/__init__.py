"""Pruning: masks, scores, scopes, schedules and methods. Works on any ``nn.Module``.

Nothing here imports a model or a dataset; data reaches a method only as an iterable of
(input, target) batches through :class:`prune_cli.pruning.method.PruneContext`.
"""
