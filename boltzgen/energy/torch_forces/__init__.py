"""OpenMM forces compiled into batched PyTorch, one `ForceTerm` per force (see ``base.py``).

`boltzgen.energy.TorchEnergy` assembles them; this package only knows OpenMM and torch.
"""
