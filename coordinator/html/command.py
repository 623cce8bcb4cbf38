"""`coordinator export-html REPORT.json [-o FILE]`: render any report.json (also an old or partial
one) as report.html."""
from __future__ import annotations

import argparse
from pathlib import Path

from shared.errors import DataError


def add_export_html(sub) -> None:
    p = sub.add_parser("export-html", help="render a report.json as one self-contained report.html")
    p.add_argument("report", type=Path, help="a report.json written by `coordinator tune` or `coordinator report`")
    p.add_argument("-o", "--output", type=Path, help="the page to write (default: report.html beside REPORT)")
    p.set_defaults(func=cmd_export_html)


def cmd_export_html(args: argparse.Namespace) -> int:
    from coordinator.html.render import REPORT_FILE, render_html
    from coordinator.report import read_report
    from shared.atomic import atomic_write_text

    report = read_report(args.report)
    output = args.output or args.report.parent / REPORT_FILE
    try:
        page = render_html(report)
    except DataError as exc:
        raise DataError(f"{args.report} is {exc.args[0]}", step="report") from exc
    atomic_write_text(output, page)
    print(f"wrote {output} ({len(page.encode()) / 1024:.0f} KiB)")
    return 0
