"""One vocabulary for every command, config and result file.

How a pretrained model meets the target task, in the simulator and the engine alike: read the
fine logits out into the coarse classes (``map``), a fresh head on frozen features (``probe``),
or a fresh head with every weight trained (``finetune``): ``transfer.protocol`` in configs,
``--protocol`` on the command line, ``protocol`` in results. The level of the target task is
``target`` everywhere (``--target``, ``run.target``, ``transfer.target``); the result key
``target_level`` names the level the errors are measured at. Folders written before this
vocabulary are rewritten by ``granularity results PATH --migrate`` (granularity.sweeps.migrate).
"""

PROTOCOLS = ("map", "probe", "finetune")
