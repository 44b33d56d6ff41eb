"""One-line errors for the cluster options of `granularity sweep` and the sweep file's
`resources` key."""

import pytest

from granularity.errors import GranularityError
from granularity.sweeps.cluster import RayExecutor, ray_address
from granularity.sweeps.spec import expand

from sweep_helpers import TINY_BASE, write_sweep


def test_resources_key_is_validated():
    spec = {"kind": "simulate", "base": TINY_BASE, "resources": {"gpus_per_run": 1, "cpus_per_run": 2}}
    sw = expand(spec)
    assert sw.resources == {"gpus_per_run": 1, "cpus_per_run": 2}
    assert sw.runs[0].run_id == expand({"kind": "simulate", "base": TINY_BASE}).runs[0].run_id  # not in the id
    with pytest.raises(GranularityError, match="Unknown key 'resources.gpus'.*valid keys are: cpus_per_run, gpus_per_run"):
        expand({**spec, "resources": {"gpus": 1}})
    with pytest.raises(GranularityError, match="'resources.cpus_per_run' entry of the sweep must be a number > 0. Got 0"):
        expand({**spec, "resources": {"cpus_per_run": 0}})


@pytest.mark.parametrize("args,message", [
    (["--gpus-per-run", "1"], "'--gpus-per-run' option is not for --executor local; it is for ray or slurm"),
    (["--partition", "gpu", "--executor", "ray"], "'--partition' option is not for --executor ray; it is for slurm"),
    (["--track", "wandb"], "'--track' option must list backends among tensorboard, mlflow. Got 'wandb'"),
    (["--slurm-param", "account", "--executor", "slurm", "--slurm-cluster", "local"],
     "'--slurm-param' option must look like key=value. Got 'account'"),
])
def test_cli_option_errors(tmp_path, cli, args, message):
    file = write_sweep(tmp_path / "s.yaml", seeds=1)
    code, out, err = cli("sweep", file, "--out", tmp_path / "store", *args)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "store").exists()  # refused before the store is touched


def test_ray_address_from_the_environment(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379" and ray_address("local") == "local"
    assert RayExecutor().address == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_address(None) is None
