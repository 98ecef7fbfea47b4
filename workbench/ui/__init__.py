"""ui: the panel (widget-free state pieces under one ``PanelState``, and a widget view per tab) and the CLI.

State, no widgets: ``settings`` (choices -> RunConfig, readout), ``run_control`` (start,
stop, wait), ``run_list`` (runs table, selection, hide, delete, export), ``try_it``
(generate mode's side-by-side answers), composed by ``state.PanelState``; beside them
``model_layers`` (a model's layer shapes), ``typed`` (numbers typed as text), ``events``.
View, ipywidgets: ``panel.Workbench`` and its tabs ``train_tab``, ``try_tab``,
``runs_tab``, ``report_tabs`` (Compare, Export), sharing ``markup``.  ``cli``: the
command line.

Imports records and below.
"""
