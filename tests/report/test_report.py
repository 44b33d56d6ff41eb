"""The HTML report: simulate run folders, phase folders and sweep stores; figures embedded and
written; configs and seeds included; a phase heatmap (mean over seeds) from a 2-axis sweep
store; rendered in a real headless browser."""

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from granularity.report import build_report
from granularity.sweeps.spec import expand
from granularity.sweeps.store import ResultsStore
from granularity.sweeps.worker import execute_run
from granularity.sweeps.phase import run_phase

TINY = {
    "name": "tiny",
    "data": {"d": 32, "P": 6, "k": 3},
    "model": {"m": 4},
    "train": {"n_train": 100, "steps": 30, "batch_size": 32, "log_points": 4},
    "transfer": {"n_test": 60, "probe_steps": 10, "finetune_steps": 10},
}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2 x 2 simulator sweep with 2 seeds in a store (run in this process), and a phase folder."""
    root = tmp_path_factory.mktemp("report_inputs")
    sweep = expand({"name": "grid", "kind": "simulate", "base": TINY,
                    "axes": {"data.k": [2, 3], "data.sigma": [0.1, 0.3]}, "seeds": 2})
    store = root / "store"
    with ResultsStore(store) as st:
        st.register_sweep(sweep)
    for run in sweep.runs:
        assert execute_run(store, run, threads=1)["status"] == "ok"
    phase = root / "phase"
    run_phase({**TINY, "seeds": 1}, "data.k=2,3", "data.sigma=0.2", phase, progress=False)
    return {"store": store, "phase": phase, "sweep": sweep}


def tiny_study(root):
    """The real-data study of granularity.experiments on a tiny in-memory data set (seconds)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for engine.conftest
    from engine.conftest import tiny_dataset

    from granularity.experiments import run_study

    cfg = {"seeds": [0, 1], "kmeans_sizes": [], "random_classes": [], "per_sample": False,
           "rare": {"classes": ["b"], "keep_fraction": 0.25}, "rare_sources": ["target"], "reference_seeds": 1,
           "run": {"dataset": "tiny", "target": 1, "train_size": None, "test_size": None, "device": "cpu",
                   "model": {"name": "cnn", "options": {"width": 4}},
                   "pretrain": {"epochs": 1, "batch_size": 32}, "transfer": {"epochs": 1, "batch_size": 32}}}
    run_study(cfg, root, dataset=tiny_dataset(), progress=False)
    return root


def transfer_store(root):
    """A store of a transfer sweep (source x seeds), its runs recorded by hand (no training)."""
    sweep = expand({"name": "granularity", "kind": "transfer", "base": {"dataset": "fashion-mnist", "train_size": 600},
                    "axes": {"source": ["target", "level:3", "kmeans-within:20"]}, "seeds": 2})
    classes = {"target": 4, "level:3": 10, "kmeans-within:20": 20}
    with ResultsStore(root) as st:
        st.register_sweep(sweep)
        for i, run in enumerate(sweep.runs):
            st.claim(run)
            src = run.params["source"]
            st.finish(run.run_id, "ok", metrics={"target_error": 0.2 - 0.01 * i, "num_source_classes": classes[src],
                                                 "source_family": src.split(":")[0] if ":" in src else "hierarchy",
                                                 "rare_error": 0.4, "common_error": 0.1},
                      hierarchy_hash="abc123")
    return root


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("real")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation
    try:
        study = tiny_study(root / "study")
    finally:
        torch.set_num_threads(threads)
    store = transfer_store(root / "store")
    page = build_report([study, store], root / "report")
    return page, page.read_text()


def test_real_data_report(real_report):
    page, text = real_report
    for title in ("U-curve: target error against pretraining granularity", "Hard samples: target error on easy vs hard",
                  "Rare subclasses", "Hard samples: error on rare vs common subclasses"):
        assert title in text
    assert text.count("U-curve") >= 2  # the study's and the transfer sweep's
    assert "&quot;rare_sources&quot;" in text and "&quot;kmeans-within:20&quot;" in text  # configs behind them
    for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', text):
        assert base64.b64decode(data)[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    sim_run = inputs["store"] / "runs" / inputs["sweep"].runs[0].run_id  # a store's run folder is a simulate run folder
    page = build_report([sim_run, inputs["phase"], inputs["store"]], out, title="test report")
    return page, page.read_text()


def test_report_embeds_every_figure_and_writes_it(report):
    page, text = report
    srcs = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*data-file="([^"]+)"', text)
    # run folder: errors + alignment; phase folder: heatmap; store: 3 heatmaps (one per protocol)
    # and, the grid being small (4 cells), bars + alignment per cell
    assert len(srcs) == 2 + 1 + 3 + 4 * 2 == text.count("<img ")
    assert len(list((page.parent / "figures").glob("*.png"))) == len(srcs)
    for data, rel in srcs:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert (page.parent / rel).read_bytes() == png
    assert "http://" not in text and "https://" not in text  # self-contained


def test_report_has_configs_seeds_and_cis(report, inputs):
    _, text = report
    assert text.count("<details>") >= 6
    assert "Resolved configs and seeds" in text and "&quot;seed0&quot;" in text
    for run in inputs["sweep"].runs:
        assert run.run_id in text  # every run behind the store's figures is named
    assert "±" in text  # confidence intervals in the tables


def test_store_heatmap_is_the_mean_over_seeds(report, inputs):
    _, text = report
    assert "Phase diagram: hard-sample error (map)" in text
    with ResultsStore(inputs["store"], create=False) as st:
        df = st.frame()
    cell = df[(df["data.k"] == 3) & (df["data.sigma"] == 0.3)]
    assert len(cell) == 2
    mean = cell["fine.map.hard"].mean()
    # the per-cell table row of the heatmap: sigma, k, coarse, fine
    row = re.search(r"<tr><td>0\.3</td><td>3</td><td>([^<]+)</td><td>([^<]+)</td></tr>", text)
    assert row is not None
    assert abs(float(row.group(2).split(" ")[0]) - mean) < 1e-3


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_report_renders_in_a_headless_browser(report, tmp_path):
    page, text = report
    probe = """<script>window.addEventListener('load', function () {
      var imgs = Array.prototype.slice.call(document.images);
      var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
      document.body.setAttribute('data-images', String(imgs.length));
      document.body.setAttribute('data-images-ok', String(ok));
    });</script>"""
    checked = page.parent / "checked.html"
    checked.write_text(text.replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body[^>]*>", res.stdout)
    assert body is not None, res.stdout[:500]
    n = re.search(r'data-images="(\d+)"', body.group(0))
    ok = re.search(r'data-images-ok="(\d+)"', body.group(0))
    assert n and ok, body.group(0)
    assert int(n.group(1)) == text.count("<img ") and int(ok.group(1)) == int(n.group(1))


def test_report_cli(inputs, tmp_path, cli):
    code, out, err = cli("report", inputs["phase"], "--out", tmp_path / "r", "--protocol", "map")
    assert code == 0 and (tmp_path / "r" / "index.html").exists() and "1 figures" in out
    code, out, err = cli("report", tmp_path / "nothing-here", "--out", tmp_path / "r2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nothing-here" in err
    (tmp_path / "empty").mkdir()
    code, out, err = cli("report", tmp_path / "empty", "--out", tmp_path / "r2")
    assert code == 2 and "not a simulate run folder" in err
    code, out, err = cli("report", "--out", tmp_path / "r2")
    assert code == 2 and len(err.strip().splitlines()) == 1
