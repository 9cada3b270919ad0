"""Build Ace-Ala-Nme from ideal backbone geometry, add hydrogens, minimise (amber99sbildn + obc)."""
import numpy as np
from openmm import app, unit
import openmm

def place(a, b, c, bond, angle, torsion):
    """NeRF: position of d given a-b-c, |cd|=bond, angle bcd, torsion abcd (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b; bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc); n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond*np.cos(angle), bond*np.sin(angle)*np.cos(torsion), bond*np.sin(angle)*np.sin(torsion)])
    return c + d2[0]*bc + d2[1]*m + d2[2]*n

phi, psi = -80.0, 150.0
X = {}
X['ACE','CH3'] = np.array([0.0, 0.0, 0.0])
X['ACE','C'] = np.array([1.52, 0.0, 0.0])
X['ACE','O'] = X['ACE','C'] + 1.23*np.array([np.cos(np.radians(60)), np.sin(np.radians(60)), 0])
X['ALA','N'] = place(X['ACE','O'], X['ACE','CH3'], X['ACE','C'], 1.33, 116.2, 180.0)
X['ACE','O'] = place(X['ALA','N'], X['ACE','CH3'], X['ACE','C'], 1.23, 120.5, 180.0)
X['ALA','CA'] = place(X['ACE','CH3'], X['ACE','C'], X['ALA','N'], 1.46, 121.7, 180.0)
X['ALA','C'] = place(X['ACE','C'], X['ALA','N'], X['ALA','CA'], 1.52, 111.2, phi)
X['ALA','CB'] = place(X['ACE','C'], X['ALA','N'], X['ALA','CA'], 1.53, 110.5, phi - 122.5)
X['NME','N'] = place(X['ALA','N'], X['ALA','CA'], X['ALA','C'], 1.33, 116.2, psi)
X['ALA','O'] = place(X['ALA','N'], X['ALA','CA'], X['ALA','C'], 1.23, 120.5, psi + 180.0)
X['NME','C'] = place(X['ALA','CA'], X['ALA','C'], X['NME','N'], 1.46, 121.7, 180.0)

top = app.Topology(); chain = top.addChain()
pos = []
for resname, names in [('ACE', ['CH3','C','O']), ('ALA', ['N','CA','C','O','CB']), ('NME', ['N','C'])]:
    res = top.addResidue(resname, chain)
    for nm in names:
        el = app.element.Element.getBySymbol(nm[0])
        top.addAtom(nm, el, res); pos.append(X[resname, nm] / 10.0)
import io
buf = io.StringIO(); app.PDBFile.writeFile(top, pos * unit.nanometer, buf)
pdb = app.PDBFile(io.StringIO(buf.getvalue()))
ff = app.ForceField('amber99sbildn.xml', 'amber99_obc.xml')
mod = app.Modeller(pdb.topology, pdb.positions)
mod.addHydrogens(ff)
system = ff.createSystem(mod.topology, nonbondedMethod=app.NoCutoff, constraints=None)
ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName('Reference'))
ctx.setPositions(mod.positions)
openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 0)
st = ctx.getState(getPositions=True, getEnergy=True)
print(mod.topology.getNumAtoms(), st.getPotentialEnergy())
with open('/tmp/adbuild/alanine_dipeptide.pdb', 'w') as f:
    app.PDBFile.writeFile(mod.topology, st.getPositions(), f, keepIds=False)
import mdtraj as md
t = md.load('/tmp/adbuild/alanine_dipeptide.pdb')
print(np.degrees(md.compute_phi(t)[1]), np.degrees(md.compute_psi(t)[1]))
print([a.name for a in t.topology.atoms])
