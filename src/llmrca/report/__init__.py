"""Reports of evaluation results: summary tables as a frame, JSON records, Markdown and rich tables,
confidence intervals, comparisons of metric views, and a self-contained HTML page with figures and a page per
case (``write_report``)."""

from llmrca.report.ci import bootstrap_mean_ci, score_cis, wilson_interval
from llmrca.report.compare import case_ranks, compare_views, comparison_markdown
from llmrca.report.drilldown import write_case_pages
from llmrca.report.html import to_html, write_report
from llmrca.report.tables import ALL, CHANCE, JSON_KEYS, print_table, summarize, to_json, to_markdown

__all__ = [
    "ALL",
    "CHANCE",
    "JSON_KEYS",
    "bootstrap_mean_ci",
    "case_ranks",
    "compare_views",
    "comparison_markdown",
    "print_table",
    "score_cis",
    "summarize",
    "to_html",
    "to_json",
    "to_markdown",
    "wilson_interval",
    "write_case_pages",
    "write_report",
]
