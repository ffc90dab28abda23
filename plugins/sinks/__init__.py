"""Sinks: where a step's result is written (tables, files, object stores, the event log)."""

from plugins.sinks.base import SINK_CLASSES, Sink, close_sinks, get_sink, rows_of

__all__ = ["SINK_CLASSES", "Sink", "close_sinks", "get_sink", "rows_of"]
