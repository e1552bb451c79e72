"""Reporting: Markdown/JSON tables and plots shared by benchmarks, experiments and the CLI."""

from advforensics.reporting.tables import format_cell, markdown_table

__all__ = ["format_cell", "markdown_table"]
