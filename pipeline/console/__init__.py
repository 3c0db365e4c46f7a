"""The operator console: a web UI on the router's topics (``pipeline console``).

A client of the topics, not a stage: it follows them into a SQLite read model
(``store``), shows cases, queues, quality and SLA, and writes back only what a department
system or a supervisor would — TaskUpdates and CaseCommands.
"""
