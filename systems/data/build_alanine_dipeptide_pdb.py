"""Build Ace-Ala-Nme from ideal backbone geometry, add hydrogens, minimise (amber99sbildn + OBC).

Builds the heavy atoms with NeRF from ideal bond lengths and angles and the requested backbone
torsions phi/psi, protonates them with OpenMM's Modeller, minimises in amber99sbildn +
amber99_obc (Reference platform, tolerance 1e-3 kJ/mol/nm) and writes the PDB. It then checks
that minimisation kept phi in the basin it was built in (same sign as the requested phi).

The two starting structures shipped with boltzgen::

    python systems/data/build_alanine_dipeptide_pdb.py --phi -80 --psi 150 \
        --output systems/data/alanine_dipeptide.pdb             # C7eq / beta (the default)
    python systems/data/build_alanine_dipeptide_pdb.py --phi 60 --psi 40 \
        --output systems/data/alanine_dipeptide_alpha_l.pdb     # alpha_L (phi > 0)
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np

#: Heavy atoms built from ideal geometry, per residue, in PDB order (hydrogens come from Modeller).
HEAVY_ATOMS = (("ACE", ("CH3", "C", "O")), ("ALA", ("N", "CA", "C", "O", "CB")), ("NME", ("N", "C")))
#: Minimisation tolerance, kJ/mol/nm.
MINIMISATION_TOLERANCE = 1e-3


def place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """NeRF: position of d given a-b-c, |cd| = bond (Angstrom), angle bcd, torsion abcd (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def heavy_atom_positions(phi: float, psi: float) -> dict[tuple[str, str], np.ndarray]:
    """Heavy-atom positions (Angstrom) of Ace-Ala-Nme with backbone torsions ``phi``, ``psi`` (degrees)."""
    X = {}
    X["ACE", "CH3"] = np.array([0.0, 0.0, 0.0])
    X["ACE", "C"] = np.array([1.52, 0.0, 0.0])
    X["ACE", "O"] = X["ACE", "C"] + 1.23 * np.array([np.cos(np.radians(60)), np.sin(np.radians(60)), 0])
    X["ALA", "N"] = place(X["ACE", "O"], X["ACE", "CH3"], X["ACE", "C"], 1.33, 116.2, 180.0)
    X["ACE", "O"] = place(X["ALA", "N"], X["ACE", "CH3"], X["ACE", "C"], 1.23, 120.5, 180.0)
    X["ALA", "CA"] = place(X["ACE", "CH3"], X["ACE", "C"], X["ALA", "N"], 1.46, 121.7, 180.0)
    X["ALA", "C"] = place(X["ACE", "C"], X["ALA", "N"], X["ALA", "CA"], 1.52, 111.2, phi)
    X["ALA", "CB"] = place(X["ACE", "C"], X["ALA", "N"], X["ALA", "CA"], 1.53, 110.5, phi - 122.5)
    X["NME", "N"] = place(X["ALA", "N"], X["ALA", "CA"], X["ALA", "C"], 1.33, 116.2, psi)
    X["ALA", "O"] = place(X["ALA", "N"], X["ALA", "CA"], X["ALA", "C"], 1.23, 120.5, psi + 180.0)
    X["NME", "C"] = place(X["ALA", "CA"], X["ALA", "C"], X["NME", "N"], 1.46, 121.7, 180.0)
    return X


def build(phi: float, psi: float, output: str) -> tuple[float, float, float]:
    """Build, protonate, minimise and write the PDB; return (energy kJ/mol, phi, psi in degrees after minimisation)."""
    import mdtraj
    import openmm
    from openmm import app, unit

    X = heavy_atom_positions(phi, psi)
    topology = app.Topology()
    chain = topology.addChain()
    positions = []
    for residue_name, atom_names in HEAVY_ATOMS:
        residue = topology.addResidue(residue_name, chain)
        for atom_name in atom_names:
            topology.addAtom(atom_name, app.element.Element.getBySymbol(atom_name[0]), residue)
            positions.append(X[residue_name, atom_name] / 10.0)
    buffer = io.StringIO()
    app.PDBFile.writeFile(topology, positions * unit.nanometer, buffer)
    pdb = app.PDBFile(io.StringIO(buffer.getvalue()))
    forcefield = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(forcefield)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(context, MINIMISATION_TOLERANCE, 0)
    state = context.getState(getPositions=True, getEnergy=True)
    with open(output, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, state.getPositions(), handle, keepIds=False)
    trajectory = mdtraj.load(output)
    phi_after = float(np.degrees(mdtraj.compute_phi(trajectory)[1][0, 0]))
    psi_after = float(np.degrees(mdtraj.compute_psi(trajectory)[1][0, 0]))
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), phi_after, psi_after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phi", type=float, default=-80.0, help="backbone phi to build, degrees (default -80)")
    parser.add_argument("--psi", type=float, default=150.0, help="backbone psi to build, degrees (default 150)")
    parser.add_argument("--output", default="alanine_dipeptide.pdb", help="PDB file to write")
    args = parser.parse_args(argv)
    energy, phi, psi = build(args.phi, args.psi, args.output)
    print(f"{args.output}: 22 atoms, minimised energy {energy:.3f} kJ/mol, phi {phi:.1f}, psi {psi:.1f} degrees")
    if np.sign(phi) != np.sign(args.phi):
        print(f"error: minimisation moved phi from {args.phi:g} to {phi:.1f} degrees (left the basin)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
