"""The read side of the results (``prune-report``): stored run directories into tables
(``collect``, ``pivot``, ``stats``), figures (``figures``) and an index page (``report``).

It reads files only: neither torch nor any method module is imported, so a report can be made
where torch is not installed. What a method adds to the report (its columns, tables, figure
lines, what its target counts) comes from the run's own ``summary.json`` (``results``), written
by the method's declaration (:mod:`prune_cli.pruning.results`)."""
