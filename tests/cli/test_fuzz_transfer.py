"""Property-based tests of ``granularity transfer`` and ``granularity study``: random options,
overrides and config files given to ``--dry-run`` end in a printed plan or a one-line error
with exit code 2 -- never a traceback; a few tiny real runs on tiny IDX files likewise."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from granularity.utils.config import dotted_keys

from granularity.engine.config import TransferConfig
from granularity.experiments.study import StudyConfig

TRIED: Counter = Counter()  # inputs per test, reported at the end of the module


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print("\nfuzz inputs tried:", dict(TRIED))


@pytest.fixture(scope="module")
def fm_root(make_fmnist):
    return make_fmnist(60, 30)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.sampled_from(["leaf", "target", "level:1", "level:3", "level:9", "kmeans-within:2", "kmeans-within:8",
                     "kmeans-global:4", "random:3", "per-sample", "map", "probe", "linear", "finetune", "cnn", "mlp",
                     "resnet18", "cuda", "cpu", "pca", "[1, 2]", "{a: 1}", "Dress", "x.npy"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def override(key, value):
    if isinstance(value, str) and value and value[0] in "[{":
        return f"{key}={value}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def check_outcome(code, out, err, ok_marker="memory estimate"):
    try:
        event(f"exit {code}")
    except Exception:  # noqa: BLE001 - called outside a hypothesis test
        pass
    assert "Traceback" not in err and "Traceback" not in out
    if code == 0:
        assert ok_marker in out
    else:
        assert code == 2, (code, err)
        # one error line (an old spelling too: an unknown option or key, no deprecation line)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("granularity: error:"), err


T_KEYS = dotted_keys(TransferConfig)
S_KEYS = dotted_keys(StudyConfig)
flag_opts = st.one_of(
    st.tuples(st.just("--source"), st.one_of(st.sampled_from(["leaf", "target", "level:1", "level:2", "level:3", "level:4",
                                                                "kmeans-within:2", "kmeans-within:4", "kmeans-within:100",
                                                                "kmeans-global:3", "random:5", "per-sample", "level:x"]),
                                              st.text(max_size=8))),
    st.tuples(st.just("--target"), st.sampled_from(["0", "1", "2", "3", "4", "-1", "x", ""])),
    st.tuples(st.just("--protocol"), st.sampled_from(["finetune", "probe", "map", "mapp", "linear"])),
    st.tuples(st.just("--mode"), st.sampled_from(["finetune", "linear", "map", "mapp"])),
    st.tuples(st.just("--train-size"), st.sampled_from(["1", "10", "60", "61", "0", "1e9"])),
    st.tuples(st.just("--model"), st.sampled_from(["cnn", "mlp", "vit", "resnet18", "nope"])),
    st.tuples(st.just("--dataset"), st.sampled_from(["fashion-mnist", "cifar100", "npz", "fashion_mnist", ""])),
    st.tuples(st.just("--device"), st.sampled_from(["cpu", "auto", "cuda", "tpu"])),
    st.tuples(st.just("--epochs"), st.sampled_from(["0", "1", "-1", "z"])),
    st.tuples(st.just("--seed"), st.sampled_from(["0", "7", "-3", "1.5"])),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(flag_opts, max_size=4), pairs=st.lists(st.tuples(st.one_of(st.sampled_from(T_KEYS), st.text(min_size=1, max_size=10)), values), max_size=3))
def test_transfer_dry_run_random_options(cli, fm_root, flags, pairs):
    TRIED["transfer --dry-run options"] += 1
    args = ["transfer", "--dry-run", "--data-root", str(fm_root), "--set", "train_size=null", "--device", "cpu"]
    for f, v in flags:
        args += [f, v]
    for k, v in pairs:
        args += ["--set", override(k, v)]
    check_outcome(*cli(*args))


yaml_docs = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(T_KEYS + ["model", "pretrain", "transfer", "rare", "x"]), children, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=yaml_docs, raw=st.binary(max_size=40), use_raw=st.booleans(), cmd=st.sampled_from(["transfer", "study"]))
def test_random_config_files(cli, fm_root, tmp_path_factory, doc, raw, use_raw, cmd):
    TRIED[f"{cmd} --dry-run config files"] += 1
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(yaml.safe_dump(doc))
    extra = ["--quick"] if cmd == "study" else []
    run = "run." if cmd == "study" else ""
    check_outcome(*cli(cmd, "--dry-run", *extra, "--data-root", str(fm_root), "--device", "cpu",
                       "--set", f"{run}train_size=null", "--set", f"{run}test_size=null", "--config", path))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.one_of(st.sampled_from(S_KEYS), st.text(min_size=1, max_size=10)), values), max_size=3),
       seeds=st.one_of(st.none(), st.sampled_from(["1", "2", "0,1", "0,x", "", ",", "-1", "99999999999"])),
       quick=st.sampled_from([True, True, False]), full=st.sampled_from([False, False, True]),
       dataset=st.sampled_from(["fashion-mnist"] * 4 + ["cifar100", "nope"]),
       design=st.sampled_from([None] * 6 + ["levels", "bridge", "bridge-phase", "groupings", "fewshot", "nope"]))
def test_study_dry_run_random_options(cli, fm_root, pairs, seeds, quick, full, dataset, design):
    TRIED["study --dry-run options"] += 1
    args = ["study", "--dataset", dataset, "--dry-run", "--data-root", str(fm_root), "--device", "cpu"]
    args += ["--set", "run.train_size=null", "--set", "run.test_size=null"] if design in (None, "levels") else ["--design", design]
    args += ["--quick"] * quick + ["--full"] * full
    if seeds is not None:
        args += ["--seeds", seeds]
    for k, v in pairs:
        args += ["--set", override(k, v)]
    code, out, err = cli(*args)
    check_outcome(code, out, err, ok_marker="memory estimate" if design in (None, "levels") else "pretraining runs")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(["leaf", "target", "level:1", "level:3", "kmeans-within:4", "kmeans-global:3", "random:3", "per-sample"]),
       target=st.sampled_from(["1", "2", "3"]), protocol=st.sampled_from(["finetune", "probe", "map"]),
       train_size=st.sampled_from(["20", "60"]))
def test_tiny_real_runs(cli, fm_root, tmp_path_factory, source, target, protocol, train_size):
    """Actually run: a run either completes (result.json) or is refused in one line, and
    --dry-run refuses exactly what the run refuses."""
    TRIED["transfer real runs"] += 1
    out = tmp_path_factory.mktemp("run")
    args = ["transfer", "--data-root", str(fm_root), "--source", source, "--target", target, "--protocol", protocol,
            "--train-size", train_size, "--epochs", "1", "--transfer-epochs", "1", "--device", "cpu",
            "--set", "model.options.width=2", "--set", "pretrain.batch_size=16", "--set", "transfer.batch_size=16",
            "--set", "test_size=20"]
    dry = cli(*args, "--dry-run")
    check_outcome(*dry)
    code, stdout, err = cli(*args, "--out", out)
    check_outcome(code, stdout, err, ok_marker="target error")
    assert (code == 0) == (out / "result.json").exists() == (dry[0] == 0), (dry, err)


# ---- contradictory settings and runs that would not fit: refused before they start ----------

@pytest.mark.parametrize(
    "args,match",
    [
        (["--source", "level:1", "--target", "3", "--protocol", "map"], "'transfer.protocol' 'map' needs source labels that nest"),
        (["--source", "random:3", "--target", "2", "--protocol", "map"], "'source' 'random:3' does not"),
        (["--source", "kmeans-global:4", "--protocol", "map"], "'source' 'kmeans-global:4' does not"),
        (["--target", "4"], "'target' parameter must be a hierarchy level in [1, 3]"),
        (["--source", "level:4"], "source level in 'level:4' must be in the range [1, 3]"),
        (["--source", "kmeans-within:3", "--target", "2"], "K >= 4 (target level 2 has 4 classes). Got K=3"),
        (["--source", "random:61"], "more classes than training images (60"),
    ],
)
def test_contradictory_settings_one_line(cli, fm_root, tmp_path, args, match):
    base = ["transfer", "--data-root", str(fm_root), "--set", "train_size=null", "--device", "cpu"]
    for extra in (["--dry-run"], ["--out", str(tmp_path / "run"), "--epochs", "0", "--transfer-epochs", "0"]):
        code, out, err = cli(*base, *args, *extra)
        check_outcome(code, out, err)
        assert code == 2 and match in err, err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_map_with_a_finer_source_is_allowed(cli, fm_root):
    code, out, err = cli("transfer", "--dry-run", "--data-root", str(fm_root), "--set", "train_size=null",
                         "--device", "cpu", "--source", "level:3", "--target", "1", "--protocol", "map")
    assert code == 0, err


def test_study_kmeans_sizes_below_target_classes(cli, fm_root):
    code, out, err = cli("study", "--dry-run", "--quick", "--data-root", str(fm_root), "--device", "cpu",
                         "--set", "run.train_size=null", "--set", "run.test_size=null", "--set", "kmeans_sizes=[2,8]")
    check_outcome(code, out, err)
    assert code == 2 and "'kmeans_sizes'" in err and "[2]" in err


def test_too_big_refused_with_estimate_and_limit(cli, fm_root, tmp_path, monkeypatch):
    """Per-sample labels give a head with one class per training image; with a (simulated)
    small machine the run is refused before it starts, naming the estimate and the limit."""
    import granularity.engine.inputs as inputs_mod  # check_plan reads available_memory there
    import granularity.engine.run as run_mod

    base = ["transfer", "--data-root", str(fm_root), "--set", "train_size=null", "--device", "cpu",
            "--epochs", "1", "--transfer-epochs", "0", "--set", "model.options.width=2"]
    need_leaf = run_mod.estimate_memory(TransferConfig(source="leaf", train_size=None, model={"options": {"width": 2}}),
                                        run_mod.prepare_data(TransferConfig(train_size=None, data_root=str(fm_root))), 10)
    need_ps = run_mod.estimate_memory(TransferConfig(source="per-sample", train_size=None, model={"options": {"width": 2}}),
                                      run_mod.prepare_data(TransferConfig(train_size=None, data_root=str(fm_root))), 60)
    assert need_ps > need_leaf  # the head (and its logits) grow with the number of classes
    limit = int((need_leaf + need_ps) / 2 / 0.8)  # leaf fits, per-sample does not
    monkeypatch.setattr(inputs_mod, "available_memory", lambda device: limit)
    code, out, err = cli(*base, "--source", "leaf", "--dry-run")
    assert code == 0, err
    for extra in (["--dry-run"], ["--out", str(tmp_path / "run")]):
        code, out, err = cli(*base, "--source", "per-sample", *extra)
        check_outcome(code, out, err)
        assert code == 2 and "needs about" in err and "GiB is available" in err and "60 source classes" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_image_folder_beyond_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    """A streamed image-folder data set would be decoded into memory by the run: the estimate
    counts its decoded float32 size and refuses before any image is decoded."""
    from PIL import Image

    import granularity.engine.inputs as inputs_mod  # check_plan reads available_memory there
    import granularity.engine.run as run_mod
    from granularity.errors import GranularityError

    for part in ("train", "val"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / part / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    cfg = TransferConfig(dataset="image-folder", data_root=str(tmp_path / "imgs"), train_size=None, target=1,
                         source="leaf", device="cpu")
    from granularity.data import load_dataset

    ds = load_dataset("image-folder", root=str(tmp_path / "imgs"), in_memory=False)
    assert not ds.train.in_memory
    monkeypatch.setattr(inputs_mod, "available_memory", lambda device: 1000)
    called = []
    monkeypatch.setattr(type(ds.train), "materialize", lambda self, *a, **k: called.append(1))
    with pytest.raises(GranularityError, match="needs about .* GiB of memory .* is available"):
        run_mod.run_transfer(cfg, tmp_path / "run", dataset=ds)
    assert not called
