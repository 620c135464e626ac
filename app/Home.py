"""uad research app: ``python -m uad app`` (or ``streamlit run app/Home.py``). Navigation only; pages live in app/views/."""

import sys
from pathlib import Path

import streamlit as st

# The app imports uad from this checkout even when the package is not installed.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import state  # noqa: E402  (needs the sys.path entry above)
import ui  # noqa: E402

from uad.data.demo import demo_ready

st.set_page_config(page_title="uad · anomaly detection in brain MRI", page_icon=":material/neurology:", layout="wide")
state.require_local_address()  # never serve patient data on a network by accident

pages = [
    st.Page("views/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("views/data.py", title="Data", icon=":material/neurology:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/explore.py", title="Explore", icon=":material/layers:"),
    st.Page("views/compare.py", title="Compare", icon=":material/query_stats:"),
]
current = st.navigation(pages)
ui.figure_format_control()  # which format every chart's camera button downloads (ui.plot)
with ui.timed(f"page {current.title}"):
    current.run()
ui.warm_up()  # after the page is drawn: preload torch for Train/Explore in the background
_root = state.active_root()
ui.prefetch_explore(str(_root), state.is_demo(_root), not state.is_demo(_root) or demo_ready())  # Explore's opening view
