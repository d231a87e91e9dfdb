"""replay: the questions asked of stored traces after an incident or before a release.

What happened (``traces``: one trace, or a delegation chain across agents, as a tree; OTLP/JSON
export and import), what changed (``diff``: two traces or two sets of traces), what would have
happened (``whatif``: re-priced, a tool removed or slowed, other SLO targets and budgets), whether a
candidate still behaves (``golden``: suites of traces with tolerances), and a re-run of the agent
offline against its recorded LLM and tool answers (``contents`` reads them, ``server`` serves them).

Everything here reads the span store through ``read(sql, params) -> rows`` (the store's ``read``
in the running pipeline, a read-only connection from the CLI), so the running pipeline's admin API
and the CLI on a stopped pipeline give the same answers.
"""
