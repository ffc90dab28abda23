"""Tool plugins: one class per tool kind, discovered through the `noetl.plugins` entry points."""
