"""Strings from a user or a file, shown as text.

Streamlit renders Markdown (with links and images, which the browser fetches) in st.markdown, captions,
alerts, toasts, expander, button and widget labels, help tooltips and progress texts; plotly renders a
subset of HTML (links among it) in trace names and titles. Run names, notes, tags, model names from
config.json, dataset and case folder names, error messages and anything else read from disk or typed
by a user go through one of these before they reach such a place:

* ``md(s)``: for Markdown text; every ASCII punctuation character is backslash-escaped (CommonMark
  allows that for all of them), so no link, image, emphasis, HTML tag, LaTeX or Streamlit directive can
  start inside ``s``, and bare addresses get an invisible word joiner so they are not made links;
* ``code(s)``: ``s`` as an inline code span (paths), fenced so that no backtick in ``s`` can end it;
* ``plot(s)``: for plotly text, HTML-escaped (plotly shows entities as the characters they stand for).
"""

from __future__ import annotations

import re
import string

from uad.evaluation.figures import text as plot_text

_PUNCTUATION = frozenset(string.punctuation)


# GitHub-flavoured Markdown also turns bare addresses in the text into links, after escapes are resolved
# (http://…, www.…, a@b.c): an invisible word joiner after the scheme or "www" and before "@" keeps them text.
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|xmpp|www)(?=[:.])")
_JOINER = "\u2060"


def md(value) -> str:
    """``value`` as Markdown that renders as exactly its text (bare addresses included, not as links)."""
    text = _AUTOLINK.sub(lambda m: m.group(1) + _JOINER, str(value)).replace("@", _JOINER + "@")
    return "".join("\\" + c if c in _PUNCTUATION else c for c in text).replace("\r", "")


def code(value) -> str:
    """``value`` as an inline code span (rendered verbatim, never parsed)."""
    text = str(value).replace("\n", " ").replace("\r", " ")
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    return f"{fence} {text} {fence}"


def plot(value) -> str:
    """``value`` for a plotly trace name, title or hover text: its characters, no markup (uad's figures, shared
    with the HTML report, escape the same way: ``uad.evaluation.figures.text``)."""
    return plot_text(value)
