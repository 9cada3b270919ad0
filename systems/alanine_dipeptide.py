"""Alanine dipeptide (Ace-Ala-Nme, 22 atoms) with amber99sbildn, in OBC implicit solvent or vacuum.

The field's standard "AD2": NoCutoff, no constraints, 300 K, LangevinMiddle with friction 1/ps for
reference MD. The starting structure ``data/alanine_dipeptide.pdb`` was built from ideal backbone
geometry (phi -80, psi 150 degrees), protonated by OpenMM's Modeller and minimised in
amber99sbildn + amber99_obc (see ``data/build_alanine_dipeptide_pdb.py``). A second structure in
the rare alpha_L basin, ``data/alanine_dipeptide_alpha_l.pdb`` (built at phi 60, psi 40; phi 54,
psi 29 degrees after minimisation), starts MD there: ``boltzgen md ... --start FILE``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from boltzgen.systems.molecular_system import MolecularSystem

PDB_FILE = "alanine_dipeptide.pdb"
TEMPERATURE_K = 300.0


def _read_pdb():
    from openmm import app

    with resources.as_file(resources.files("boltzgen.systems") / "data" / PDB_FILE) as path:
        return app.PDBFile(str(path))


def alanine_dipeptide(implicit: bool = True) -> MolecularSystem:
    """Build AD2 with amber99sbildn (+ amber99_obc implicit solvent when ``implicit``)."""
    from openmm import app, unit

    pdb = _read_pdb()
    forcefield_files = ("amber99sbildn.xml", "amber99_obc.xml") if implicit else ("amber99sbildn.xml",)
    forcefield = app.ForceField(*forcefield_files)
    system = forcefield.createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
    )
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    solvent = "OBC implicit solvent (amber99_obc)" if implicit else "vacuum"
    return MolecularSystem(
        name="alanine_dipeptide_implicit" if implicit else "alanine_dipeptide_vacuum",
        description=(
            f"Alanine dipeptide (Ace-Ala-Nme, 22 atoms), amber99sbildn, {solvent}, NoCutoff, "
            f"no constraints, {TEMPERATURE_K:g} K"
        ),
        openmm_system=system,
        topology=pdb.topology,
        positions=positions,
        temperature=TEMPERATURE_K,
        forcefield=forcefield_files,
        friction_per_ps=1.0,
        options={"implicit": implicit},
    )
