"""Z-matrix: which atoms define each atom's bond, angle and torsion, built from a bond graph.

A `ZMatrix` places a molecule of ``n_atoms`` atoms in a fixed order. Three *root* atoms
``(r0, r1, r2)``, a bonded chain r0-r1-r2, fix the frame. Every other atom ``i`` has a row
``(i, a, b, c)`` of reference atoms placed before it; its internal coordinates are

- bond ``|x_i - x_a|``, angle ``angle(i, a, b)`` at ``a``, torsion ``dihedral(i, a, b, c)``.

`ZMatrix.from_topology` chooses the rows from a molecular bond graph (see its docstring), so that
``i-a``, ``a-b`` and ``b-c`` are bonds (proper torsions) wherever the graph allows it.

The internal-coordinate layout derived from a Z-matrix (used by
`boltzgen.flows.InternalCoordinateTransform`) is ``[bonds | angles | torsions]`` with

- bonds ``(N - 1)``: ``(r1, r0)``, ``(r2, r1)``, then ``(i, a)`` for each row,
- angles ``(N - 2)``: ``(r2, r1, r0)``, then ``(i, a, b)`` for each row,
- torsions ``(N - 3)``: ``(i, a, b, c)`` for each row,

see `bond_atoms`, `angle_atoms`, `torsion_atoms`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class ZMatrix:
    """Placement order and reference atoms of a molecule (validated on construction).

    Attributes:
        root: the three root atoms ``(r0, r1, r2)``; r1 is bonded to r0 and r2.
        rows: ``[N - 3, 4]`` int64 array of ``(i, a, b, c)`` in placement order (read-only).
        n_atoms: number of atoms N.

    Raises ``ValueError`` unless every atom appears exactly once (in the root or as some ``i``),
    and every row's ``a, b, c`` are distinct atoms other than ``i`` that are placed before ``i``.
    """

    root: tuple[int, int, int]
    rows: np.ndarray
    n_atoms: int

    def __post_init__(self) -> None:
        n_atoms = int(self.n_atoms)
        if n_atoms < 3:
            raise ValueError(f"a Z-matrix needs at least 3 atoms, got n_atoms={n_atoms}")
        root = tuple(int(r) for r in self.root)
        if len(root) != 3:
            raise ValueError(f"root must name 3 atoms, got {self.root!r}")
        rows = np.asarray(self.rows)
        if rows.size == 0:
            rows = rows.reshape(0, 4)
        if rows.ndim != 2 or rows.shape[1] != 4:
            raise ValueError(f"rows must have shape [N - 3, 4], got {rows.shape}")
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must hold integer atom indices, got dtype {rows.dtype}")
        rows = rows.astype(np.int64, copy=True)
        rows.setflags(write=False)
        object.__setattr__(self, "n_atoms", n_atoms)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "rows", rows)
        self._validate()

    def _validate(self) -> None:
        order = self.placement_order
        out_of_range = sorted({int(k) for k in np.concatenate([order, self.rows.ravel()])
                               if not 0 <= k < self.n_atoms})
        if out_of_range:
            raise ValueError(f"atom indices {out_of_range} are outside [0, {self.n_atoms})")
        counts = np.bincount(order, minlength=self.n_atoms)
        missing = np.flatnonzero(counts == 0).tolist()
        repeated = np.flatnonzero(counts > 1).tolist()
        if missing or repeated:
            raise ValueError(
                f"every atom must be placed exactly once: missing atoms {missing}, "
                f"atoms placed more than once {repeated}"
            )
        position = np.empty(self.n_atoms, dtype=np.int64)
        position[order] = np.arange(self.n_atoms)
        for i, a, b, c in self.rows.tolist():
            if len({i, a, b, c}) != 4:
                raise ValueError(f"row (i, a, b, c) = {(i, a, b, c)} repeats an atom")
            late = [ref for ref in (a, b, c) if position[ref] > position[i]]
            if late:
                raise ValueError(
                    f"row (i, a, b, c) = {(i, a, b, c)}: reference atoms {late} are placed after {i}"
                )

    @property
    def placement_order(self) -> np.ndarray:
        """``[N]`` atom indices in the order they are placed: the root, then each row's ``i``."""
        return np.concatenate([np.asarray(self.root, dtype=np.int64), self.rows[:, 0]])

    @property
    def n_internal(self) -> int:
        """Number of internal coordinates, ``3N - 6``."""
        return 3 * self.n_atoms - 6

    @property
    def bond_atoms(self) -> np.ndarray:
        """``[N - 1, 2]`` atom pairs of the bonds, in internal-coordinate order."""
        r0, r1, r2 = self.root
        return np.concatenate([np.array([[r1, r0], [r2, r1]]), self.rows[:, :2]]).astype(np.int64)

    @property
    def angle_atoms(self) -> np.ndarray:
        """``[N - 2, 3]`` atom triples (vertex in the middle) of the angles, in order."""
        r0, r1, r2 = self.root
        return np.concatenate([np.array([[r2, r1, r0]]), self.rows[:, :3]]).astype(np.int64)

    @property
    def torsion_atoms(self) -> np.ndarray:
        """``[N - 3, 4]`` atom quadruples of the torsions, in order (the rows themselves)."""
        return np.array(self.rows, dtype=np.int64)

    def find_torsion(self, atoms: Sequence[int]) -> int:
        """Index (0 .. N-4) of the torsion over ``atoms`` (a quadruple, either direction).

        E.g. the backbone dihedral phi = (C-, N, CA, C) of alanine dipeptide. Raises ``ValueError``
        if no torsion of this Z-matrix runs over these four atoms.
        """
        quadruple = tuple(int(k) for k in atoms)
        if len(quadruple) != 4:
            raise ValueError(f"a torsion needs 4 atoms, got {atoms!r}")
        for k, row in enumerate(self.rows.tolist()):
            if tuple(row) in (quadruple, quadruple[::-1]):
                return k
        raise ValueError(f"no torsion over atoms {quadruple} (in either direction) in this Z-matrix")

    @classmethod
    def from_topology(cls, topology, relative_torsions: bool = True) -> "ZMatrix":
        """Build a Z-matrix from the bond graph of an ``mdtraj.Topology`` (or OpenMM topology).

        Works for any connected molecule with at least 3 atoms:

        1. Root: the heavy atom in the middle of the molecule's longest heavy-atom path (found by
           a double breadth-first sweep; exact graph centre for acyclic heavy-atom graphs;
           backbone atoms win ties) and two of its neighbours, preferring heavy backbone atoms;
           the two ends ordered by atom index. For alanine dipeptide: (N, CA, C).
        2. Order: heavy atoms first, breadth-first from the root (the root's end atoms are
           expanded before its middle atom, so that every branch at the middle atom has a proper
           torsion reference); then the hydrogens (and anything still unplaced), parent by parent
           in placement order.
        3. References of a new atom ``i`` with parent ``a`` (the placed atom it was reached from):
           ``b`` a placed neighbour of ``a`` and ``c`` a placed neighbour of ``b`` (``c != a``),
           preferring ``b = parent(a)``, ``c = parent(b)``, then heavy atoms, then low indices.
           Where no proper chain ends in a heavy atom (e.g. the middle carbon of propane), ``c``
           is a heavy placed neighbour of ``a`` instead (an improper torsion), then a hydrogen,
           then any placed atom (e.g. methane). Children of one parent are placed heavy atoms
           first, backbone atoms first, then those with more heavy neighbours.
        4. ``relative_torsions=True`` (the default): only the first branch around a bond gets that
           proper torsion. If ``a`` already has a placed neighbour ``s`` other than ``b`` (an
           earlier sibling of ``i``, or ``a``'s own heavy neighbour), ``c = s`` instead, heavy
           atoms first, then the earliest placed: the torsion (i, a, b, s) is the angle between
           ``i`` and ``s`` around the bond a-b, which is nearly fixed (about +-120 degrees for a
           tetrahedral centre, 180 degrees for a planar one). So each rotatable bond carries one
           free torsion and every other branch around it a narrow, unimodal offset (the bgflow
           convention): e.g. the second and third methyl hydrogens, the carbonyl O next to the
           next residue's N, or C-beta next to C at C-alpha (which fixes the chirality). With
           ``False`` all children of a parent share one proper ``(a, b, c)`` and rotate together.

        Raises ``ValueError`` for fewer than 3 atoms or a disconnected bond graph.
        """
        graph = _BondGraph.from_topology(topology)
        return _build_zmatrix(graph, relative_torsions=bool(relative_torsions))


@dataclass(frozen=True)
class _BondGraph:
    """Atoms as vertices: neighbours (sorted), hydrogen and backbone flags."""

    neighbours: tuple[tuple[int, ...], ...]
    is_hydrogen: tuple[bool, ...]
    is_backbone: tuple[bool, ...]

    @classmethod
    def from_topology(cls, topology) -> "_BondGraph":
        topology = _as_mdtraj_topology(topology)
        n_atoms = topology.n_atoms
        adjacency: list[set[int]] = [set() for _ in range(n_atoms)]
        for bond in topology.bonds:
            i, j = bond[0].index, bond[1].index
            if i != j:
                adjacency[i].add(j)
                adjacency[j].add(i)
        hydrogen = tuple(
            atom.element is not None and getattr(atom.element, "number", 0) == 1
            for atom in topology.atoms
        )
        backbone = tuple(bool(getattr(atom, "is_backbone", False)) for atom in topology.atoms)
        return cls(tuple(tuple(sorted(s)) for s in adjacency), hydrogen, backbone)

    @property
    def n_atoms(self) -> int:
        return len(self.neighbours)

    def distances_from(self, source: int) -> np.ndarray:
        """Graph distances (number of bonds) from ``source``; -1 where unreachable."""
        distance = np.full(self.n_atoms, -1, dtype=np.int64)
        distance[source] = 0
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for v in self.neighbours[u]:
                if distance[v] < 0:
                    distance[v] = distance[u] + 1
                    queue.append(v)
        return distance

    def shortest_path(self, source: int, target: int) -> list[int]:
        """Atoms on a shortest path from ``source`` to ``target`` (lowest indices on ties)."""
        distance = self.distances_from(target)
        path = [source]
        while path[-1] != target:
            here = path[-1]
            path.append(min(v for v in self.neighbours[here] if distance[v] == distance[here] - 1))
        return path


def _as_mdtraj_topology(topology):
    if hasattr(topology, "atoms") and callable(topology.atoms):  # an openmm.app.Topology
        import mdtraj

        return mdtraj.Topology.from_openmm(topology)
    return topology


def _farthest(graph: _BondGraph, source: int, candidates: Sequence[int]) -> int:
    distance = graph.distances_from(source)
    return max(candidates, key=lambda v: (distance[v], -v))


def _choose_root(graph: _BondGraph) -> tuple[int, int, int]:
    heavy = [v for v in range(graph.n_atoms) if not graph.is_hydrogen[v]] or list(range(graph.n_atoms))
    end = _farthest(graph, heavy[0], heavy)
    other_end = _farthest(graph, end, heavy)
    path = graph.shortest_path(end, other_end)
    middle_candidates = {path[(len(path) - 1) // 2], path[len(path) // 2]}

    def middle_preference(v: int):
        return (len(graph.neighbours[v]) < 2, not graph.is_backbone[v], -len(graph.neighbours[v]), v)

    middle = min(middle_candidates, key=middle_preference)
    if len(graph.neighbours[middle]) < 2:  # tiny molecules: any atom with two neighbours
        middle = min(
            range(graph.n_atoms), key=lambda v: (len(graph.neighbours[v]) < 2, graph.is_hydrogen[v], v)
        )
        if len(graph.neighbours[middle]) < 2:
            raise ValueError("no atom has two bonded neighbours: cannot choose a root chain a-b-c")

    def end_preference(v: int):
        heavy_neighbours = sum(not graph.is_hydrogen[w] for w in graph.neighbours[v])
        return (graph.is_hydrogen[v], not graph.is_backbone[v], -heavy_neighbours, v)

    first, second = sorted(sorted(graph.neighbours[middle], key=end_preference)[:2])
    return (first, middle, second)


def _choose_references(
    graph: _BondGraph, a: int, placed: set[int], parent: dict[int, int | None]
) -> tuple[int, int]:
    """``(b, c)`` for the children of the placed atom ``a``.

    Preference: a proper chain a-b-c with a heavy ``c``; else an improper ``c`` (a heavy placed
    neighbour of ``a``); else a proper chain with a hydrogen ``c``; else any placed atom.
    Within each tier ``b = parent(a)`` and ``c = parent(b)`` win, then heavy atoms, then low indices.
    """

    def preference(atom: int, wanted: int | None):
        return (atom != wanted, graph.is_hydrogen[atom], atom)

    b_candidates = sorted(
        (v for v in graph.neighbours[a] if v in placed), key=lambda v: preference(v, parent[a])
    )
    proper = [
        (b, c)
        for b in b_candidates
        for c in sorted((v for v in graph.neighbours[b] if v in placed and v != a),
                        key=lambda v: preference(v, parent[b]))
    ]
    improper = [
        (b, c) for b in b_candidates for c in b_candidates if c != b and not graph.is_hydrogen[c]
    ]
    heavy_proper = [(b, c) for b, c in proper if not graph.is_hydrogen[c]]
    for tier in (heavy_proper, improper, proper):
        if tier:
            return tier[0]
    b = b_candidates[0]
    fallback = [v for v in b_candidates if v != b] or sorted(placed - {a, b})
    return b, min(fallback, key=lambda v: preference(v, None))


def _build_zmatrix(graph: _BondGraph, relative_torsions: bool = True) -> ZMatrix:
    if graph.n_atoms < 3:
        raise ValueError(f"a Z-matrix needs a molecule of at least 3 atoms, got {graph.n_atoms}")
    unreachable = np.flatnonzero(graph.distances_from(0) < 0).tolist()
    if unreachable:
        raise ValueError(
            f"the bond graph is not connected: atoms {unreachable} are not bonded to atom 0; "
            "build one Z-matrix per molecule"
        )
    root = _choose_root(graph)
    parent: dict[int, int | None] = {root[1]: None, root[0]: root[1], root[2]: root[1]}
    placed = set(root)
    rows: list[tuple[int, int, int, int]] = []

    placement_index = {atom: k for k, atom in enumerate(root)}

    def branch_order(v: int):
        heavy_neighbours = sum(not graph.is_hydrogen[w] for w in graph.neighbours[v])
        return (graph.is_hydrogen[v], not graph.is_backbone[v], -heavy_neighbours, v)

    def place_children(a: int, children: Iterable[int]) -> list[int]:
        children = sorted((v for v in children if v not in placed), key=branch_order)
        if not children:
            return []
        b, proper_c = _choose_references(graph, a, placed, parent)
        for i in children:
            c = proper_c
            if relative_torsions:
                siblings = [v for v in graph.neighbours[a] if v in placed and v != b]
                if siblings:
                    c = min(siblings, key=lambda v: (graph.is_hydrogen[v], placement_index[v]))
            rows.append((i, a, b, c))
            parent[i] = a
            placed.add(i)
            placement_index[i] = len(placement_index)
        return children

    queue = deque([root[0], root[2], root[1]])
    while queue:  # heavy atoms, breadth first
        a = queue.popleft()
        queue.extend(place_children(a, (v for v in graph.neighbours[a] if not graph.is_hydrogen[v])))
    order = list(root) + [row[0] for row in rows]
    k = 0
    while k < len(order):  # hydrogens (and whatever is left) on their parents, in placement order
        order.extend(place_children(order[k], graph.neighbours[order[k]]))
        k += 1
    return ZMatrix(root=root, rows=np.array(rows, dtype=np.int64).reshape(-1, 4), n_atoms=graph.n_atoms)
