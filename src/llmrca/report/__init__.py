"""Reports of evaluation results: summary tables as a frame, JSON records, Markdown and rich tables."""

from llmrca.report.tables import ALL, CHANCE, JSON_KEYS, print_table, summarize, to_json, to_markdown

__all__ = ["ALL", "CHANCE", "JSON_KEYS", "print_table", "summarize", "to_json", "to_markdown"]
