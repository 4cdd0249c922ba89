"""The simulator's metric views live with the case contract (``llmrca.case.views``), so the runner and methods
can select them for any case; this module keeps the simulator's own import path."""

from llmrca.case.views import STUDY_METRICS, VIEWS, View, column_order, columns, select_view, view_of

__all__ = ["STUDY_METRICS", "VIEWS", "View", "column_order", "columns", "select_view", "view_of"]
