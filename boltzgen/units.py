"""Physical constants and reduced-unit conversions.

boltzgen works in nm for lengths and in reduced energies u = U / (k_B T) ("kT"). OpenMM works in
kJ/mol and kJ/mol/nm; these helpers convert between the two.
"""

#: Molar gas constant R = N_A k_B in kJ/(mol K) (CODATA 2018, exact), as OpenMM uses it.
MOLAR_GAS_CONSTANT_KJ_PER_MOL_K = 0.00831446261815324


def kt_kj_per_mol(temperature: float) -> float:
    """Thermal energy k_B T in kJ/mol at ``temperature`` (K)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (K), got {temperature!r}")
    return MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * float(temperature)
