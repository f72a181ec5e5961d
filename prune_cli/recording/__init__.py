"""The run side of the results: what the level loop measures (``measure``, ``cost``,
``distortion``), the rows it keeps and writes (``records``) and what the console shows
(``console``). The read side, which turns stored runs into tables and figures, is
:mod:`prune_cli.reporting`; the two share no import, only the files of the run directory."""
