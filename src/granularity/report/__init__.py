"""Self-contained HTML reports (figures embedded as data URIs) built from stored results."""

from granularity.report.build import build_report, collect_sections, detect

__all__ = ["build_report", "collect_sections", "detect"]
