"""One vocabulary for every command, config and result file, and the spellings it replaced.

=====================================  ==========================================  ============
old spelling (still read)              new spelling                                where
=====================================  ==========================================  ============
``transfer.mode``                      ``transfer.protocol``                       transfer, study, advise, sweeps
``linear`` (a transfer mode)           ``probe``                                   the same
``--mode``                             ``--protocol``                              transfer, study, advise
``transfer_mode`` (result.json)        ``protocol``                                run results (readers take both)
study keys ``dataset``, ``target``...  ``run.dataset``, ``run.target``...          study configs
``study DATASET``                      ``study --dataset DATASET``                 study
``transfer.target_level``              ``transfer.target``                         simulate, phase, sweeps of kind simulate
=====================================  ==========================================  ============

The level of the target task is ``target`` everywhere (``--target``, ``run.target``,
``transfer.target``); the result key ``target_level`` (the engine's ``result.json``, the
report's tables) keeps its name: it is a reported field naming the level the errors and
figures are measured at, not a setting.

Old spellings are read at the boundary (config validators, ``--set``, sweep axes and filters,
click options) with one deprecation line naming the new one; stored files of any release are
read silently. This module holds the rename tables and imports nothing heavy, so that stores
and sweeps can use them without loading torch.
"""

from __future__ import annotations

from typing import Any

from granularity.utils.deprecation import Renamed, downgrade, upgrade

# How a pretrained model meets the target task, in the simulator and the engine alike: read the
# fine logits out into the coarse classes (map), a fresh head on frozen features (probe), or a
# fresh head with every weight trained (finetune).
PROTOCOLS = ("map", "probe", "finetune")

# The engine's transfer stage called the protocol `mode`, and `probe` `linear`.
STAGE_RENAMES = (Renamed("mode", "protocol", {"linear": "probe"}),)
TRANSFER_RENAMES = tuple(Renamed(f"transfer.{r.old}", f"transfer.{r.new}", r.values) for r in STAGE_RENAMES)


# The simulator called the level of the target task `target_level`; the engine calls it `target`.
SIM_TRANSFER_RENAMES = (Renamed("target_level", "target"),)
SIM_RENAMES = tuple(Renamed(f"transfer.{r.old}", f"transfer.{r.new}", r.values) for r in SIM_TRANSFER_RENAMES)


def read_sim_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored simulator ``config.json`` (of any release) in the current spelling, silently."""
    return upgrade(raw, SIM_RENAMES, warn=False)


def sim_id_form(canon: dict[str, Any]) -> dict[str, Any]:
    """What a simulator config hash hashes: the dump in the spelling of before the renames
    (``transfer.target_level``), so that run folders made before them keep their hash."""
    return downgrade(canon, SIM_RENAMES)


def read_transfer_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored transfer ``config.json`` (of any release) in the current spelling, silently."""
    return upgrade(raw, TRANSFER_RENAMES, warn=False)


def transfer_id_form(canon: dict[str, Any]) -> dict[str, Any]:
    """What a sweep's run id hashes: the dump in the spelling of before the renames, so that
    runs (and store folders) made before them keep their ids; both spellings give one id."""
    return downgrade(canon, TRANSFER_RENAMES)
