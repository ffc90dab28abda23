"""The embedded servers of local mode: nats-server, PostgreSQL, and their process helpers.

`noetl.local` decides which of them run and where; the modules here only know how to
initialise, start, probe and find one server.
"""
