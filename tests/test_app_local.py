"""The app stays on this machine, and one case that does not fit in memory costs a message, not the page.

The address tests start a real Streamlit server from a folder outside the repository and read which
address the kernel has it listening on (/proc/net/tcp*), the way a colleague on the network would find it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, stop_streamlit, wait_for_streamlit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app"))  # the app's helper module, as Home.py imports it

st_config = pytest.importorskip("streamlit.config")


# -- where the server listens ------------------------------------------------------------------------------
def _listening(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port``, from the kernel's tables."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address)  # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


@contextmanager
def _server(argv: list[str], port: int, cwd: Path):
    env = dict(os.environ, UAD_HOME=str(cwd / "home"), PYTHONPATH=str(REPO))
    env.pop("STREAMLIT_SERVER_ADDRESS", None)
    log = cwd / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_streamlit(port, proc, log, timeout=90)
        yield log
    finally:
        stop_streamlit(proc)


def _script_level_config_supported() -> bool:
    from streamlit import file_util

    return hasattr(file_util, "get_main_script_streamlit_file_path")


pytestmark_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")


@pytestmark_proc
@pytest.mark.skipif(not _script_level_config_supported(),
                    reason="this Streamlit reads config.toml only from the working directory; use python -m uad app")
def test_streamlit_run_from_another_folder_listens_on_loopback_only(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "Home.py"), "--server.headless=true",
            f"--server.port={port}"]
    with _server(argv, port, tmp_path) as log:
        assert _listening(port) == {"127.0.0.1"}, log.read_text()
        assert "Network URL" not in log.read_text()


@pytestmark_proc
def test_uad_app_launcher_listens_on_loopback_only(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "uad", "app", "--server.headless=true", f"--server.port={port}"]
    with _server(argv, port, tmp_path) as log:
        assert _listening(port) == {"127.0.0.1"}, log.read_text()


def test_both_config_copies_match():
    """Streamlit reads app/.streamlit/ wherever it starts; older versions only the repository root's."""
    assert (REPO / "app" / ".streamlit" / "config.toml").read_text() == (REPO / ".streamlit" / "config.toml").read_text()


@pytest.fixture
def address_option():
    """Set server.address as if it came from a given place; restored afterwards."""
    saved = st_config.get_option("server.address"), st_config.get_where_defined("server.address")

    def set_address(value, where):
        st_config.set_option("server.address", value, where_defined=where)

    yield set_address
    st_config.set_option("server.address", saved[0], where_defined=saved[1])


@pytest.mark.parametrize(
    "value, where, allowed",
    [
        (None, "<default>", False),  # Streamlit's default: every interface
        ("0.0.0.0", "/home/someone/.streamlit/config.toml", False),
        ("192.168.1.5", "/elsewhere/.streamlit/config.toml", False),
        ("0.0.0.0", "command-line argument or environment variable", True),  # --server.address 0.0.0.0
        ("127.0.0.1", "<default>", True),
        ("::1", "/x/config.toml", True),
        ("localhost", "/x/config.toml", True),
        ("unix:///tmp/uad.sock", "/x/config.toml", True),
    ],
)
def test_app_refuses_a_network_address_nobody_asked_for(address_option, value, where, allowed):
    import state

    address_option(value, where)
    problem = state.address_problem()
    assert (problem is None) == allowed
    if not allowed:
        assert "python -m uad app" in problem and "--server.address" in problem


# -- memory ------------------------------------------------------------------------------------------------
def test_out_of_memory_in_one_modality_is_a_message(tmp_path, monkeypatch):
    import state
    from conftest import phantom, write_case

    from uad.data import volumes

    vols, seg = phantom()
    write_case(tmp_path, "C", vols, seg)
    real = volumes.load_case

    def load_case(case, modalities, *a, **k):
        if modalities == ("t1",):
            raise MemoryError
        return real(case, modalities, *a, **k)

    monkeypatch.setattr(volumes, "load_case", load_case)
    state.load_display_case.clear()
    d = state.load_display_case(str(tmp_path), "C", ("test",))
    assert "not enough memory" in d.errors["t1"] and "C_t1.nii.gz" in d.errors["t1"]
    assert sorted(d.mods) == ["flair", "t1ce", "t2"] and d.labels is not None
    assert all(isinstance(m, np.ndarray) and m.dtype == np.int16 for m in d.mods.values())  # the files' own values
    assert MemoryError in state.APP_ERRORS  # what the Explore page catches around a case
