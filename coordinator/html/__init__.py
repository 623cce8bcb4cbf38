"""report.html: a campaign's report.json as one self-contained page (inline CSS, JS and SVG; it
loads nothing from the network), rendered with Jinja2 autoescaping so text from models and agents
(node names, device names, crash stderr) is always shown as text."""
from coordinator.html.render import render_html, write_html

__all__ = ["render_html", "write_html"]
