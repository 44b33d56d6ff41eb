"""Property-based tests: random and malformed configs/overrides given to the CLI end either in
a valid run or in a one-line error with exit code 2 -- never a traceback."""

import json

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from granularity.theory.config import SimConfig
from granularity.utils.config import dotted_keys

KEYS = dotted_keys(SimConfig)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["relu", "smooth_relu", "map", "fine", "coarse", "cuda", "auto", "[1, 2]", "{a: 1}"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=15), st.sampled_from(["data", "data.", ".k", "a..b"]))


def override_text(key, value):
    if isinstance(value, str) and value and value[0] in "[{":
        return f"{key}={value}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def check_outcome(code, out, err):
    event(f"exit {code}")
    assert "Traceback" not in err and "Traceback" not in out
    if code == 0:
        assert "memory estimate" in out or "hard error" in out
    else:
        assert code == 2, (code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("granularity: error:"), err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_random_overrides_valid_or_one_line_error(cli, pairs):
    args = []
    for k, v in pairs:
        args += ["--set", override_text(k, v)]
    check_outcome(*cli("simulate", "--dry-run", *args))


yaml_docs = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.sampled_from(KEYS + ["data", "model", "train", "x"]), children, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=yaml_docs, raw=st.binary(max_size=40), use_raw=st.booleans())
def test_random_config_files(cli, tmp_path_factory, doc, raw, use_raw):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(yaml.safe_dump(doc))
    check_outcome(*cli("simulate", "--dry-run", "--config", path))


small = {
    "data.d": st.integers(-2, 40), "data.k": st.integers(0, 4), "data.K": st.integers(1, 3),
    "data.P": st.integers(0, 8), "data.s": st.integers(0, 3), "train.steps": st.integers(0, 6),
    "train.n_train": st.integers(0, 40), "train.batch_size": st.one_of(st.none(), st.integers(0, 16)),
    "model.m": st.integers(0, 3), "transfer.n_test": st.integers(0, 30),
    "data.deeper": st.lists(st.integers(0, 2), max_size=2),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=small))
def test_small_real_runs_complete_or_fail_cleanly(cli, tmp_path_factory, chosen):
    """Actually run: any config either completes (writes result.json) or is refused in one line."""
    out = tmp_path_factory.mktemp("run")
    base = ["--preset", "quick", "--seeds", "1", "--quiet", "--out", str(out),
            "--set", "transfer.probe_steps=3", "--set", "transfer.finetune_steps=3",
            "--set", "train.steps=5", "--set", "transfer.n_test=20", "--set", "train.n_train=30"]
    args = []
    for k, v in chosen.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    code, stdout, err = cli("simulate", *base, *args)
    check_outcome(code, stdout, err)
    assert (code == 0) == (out / "result.json").exists()
