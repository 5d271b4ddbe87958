"""Notebooks: committed clean (no outputs, one parameters cell, python3 kernelspec) and runnable as shipped."""
import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
TUTORIALS = [n for n in NOTEBOOKS if os.path.basename(n)[:2] in {"00", "01", "02", "03", "04", "05"}]
# every notebook runs with its defaults, except the benchmark notebook (run with overridden parameters below)
RUN_AS_SHIPPED = [n for n in NOTEBOOKS if not os.path.basename(n).startswith("10_")]


def _kernel_name() -> str:
    """The kit's kernel (installed into the venv by the setup script) when present, else python3."""
    from jupyter_client.kernelspec import KernelSpecManager
    specs = KernelSpecManager().find_kernel_specs()
    return "prunevid-kit" if "prunevid-kit" in specs else "python3"


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_is_clean(path):
    nb = json.load(open(path))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs before committing"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0], "the first code cell is the one papermill parameters cell"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One data root for every notebook (the synthetic split is generated there on first use)."""
    return str(tmp_path_factory.mktemp("DATAS"))


@pytest.mark.slow
@pytest.mark.parametrize("path", RUN_AS_SHIPPED, ids=os.path.basename)
def test_notebook_runs_with_its_defaults(path, tmp_path, data_root, monkeypatch):
    import papermill as pm
    env_path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", ROOT + (os.pathsep + env_path if env_path else ""))   # the kernel imports this checkout
    monkeypatch.setenv("PRUNEVID_DATA", data_root)
    # the kernel's torch on one thread: the tiny models are fastest so, and many times so on a busy 2-core machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # a scratch working folder, so relative outputs (runs/, DATAS/) never land in the checkout
    pm.execute_notebook(path, str(tmp_path / os.path.basename(path)), kernel_name=_kernel_name(),
                        cwd=str(tmp_path), progress_bar=False)


@pytest.mark.slow
def test_benchmark_notebook_through_papermill_with_overrides(tmp_path):
    """The papermill target, run as the report command runs it: parameters injected, results written, HTML made."""
    import papermill as pm
    from fixtures import make_mvbench
    from prunevid.harness import report
    make_mvbench(str(tmp_path / "DATAS"))
    out_dir = tmp_path / "run"
    executed = tmp_path / "10.ipynb"
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_path if env_path else "")
    try:
        pm.execute_notebook(os.path.join(ROOT, "notebooks", "10_benchmark.ipynb"), str(executed),
                            parameters={"benchmark": "mvbench", "data_root": str(tmp_path / "DATAS"), "limit": 3,
                                        "frames": 4, "alpha": 0.3, "output_dir": str(out_dir)},
                            kernel_name=_kernel_name(), cwd=os.path.join(ROOT, "notebooks"), progress_bar=False)
    finally:
        os.environ["PYTHONPATH"] = env_path
    res = json.load(open(out_dir / "results.json"))
    assert res["config"]["benchmark"] == "mvbench" and res["n_samples"]["done"] == 3
    assert res["method"]["name"] == "prunevid" and res["method"]["alpha"] == 0.3
    assert res["metrics"]["by_category"] and 0 < res["tokens"]["retained_ratio"] < 1
    report.export_html(str(executed), str(tmp_path / "10.html"))
    page = (tmp_path / "10.html").read_text()
    assert "Per category" in page and "config_class(method)" not in page     # outputs shown, code hidden
