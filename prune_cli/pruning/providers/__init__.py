"""The providers of the needs of the importance measures (``prune_cli.pruning.derivatives``).

Every module here is imported with ``prune_cli.pruning.derivatives``, so that its ``@provider``
registrations run: a new per-weight or per-channel statistic is one new module in this package,
a function ``(Request) -> {field: {param: tensor}}`` decorated with ``@provider(need, *fields)``.
A measure then declares ``needs = frozenset({need})`` and reads ``site.<field>``.
"""
