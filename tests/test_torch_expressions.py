"""The Lepton expression compiler and the tabulated functions against OpenMM's Reference platform.

Oracle: a CustomExternalForce (variables x, y, z) or a one-particle CustomCompoundBondForce
(variables x1, y1, z1, and tabulated functions) evaluated in float64 on the Reference platform;
one particle per point gives per-point derivatives (forces), and per-point values come from
looping ``setPositions`` over a one-particle system.
"""

from __future__ import annotations

import math

import numpy as np
import openmm
import pytest
import torch

from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.energy.torch_forces.expressions import (
    CompiledExpression,
    ExpressionError,
    MissingVariableError,
    compile_expression,
)
from boltzgen.energy.torch_forces.tabulated import tabulated_function, tabulated_functions_of
from force_term_checks import reference_context, single_force_system

KJ = openmm.unit.kilojoule_per_mole
RTOL = 1e-6


def _context(force: openmm.Force, n: int) -> openmm.Context:
    """A Reference-platform Context of ``force`` (a copy) on ``n`` particles of mass 1."""
    return reference_context(single_force_system(force, [1.0] * n))


def _external(expression: str, points: np.ndarray, params: dict | None = None, globals_: dict | None = None):
    force = openmm.CustomExternalForce(expression)
    params = params or {}
    for name in params:
        force.addPerParticleParameter(name)
    for name, value in (globals_ or {}).items():
        force.addGlobalParameter(name, value)
    for i in range(len(points)):
        force.addParticle(i, [float(params[name][i]) for name in params])
    return force


def openmm_values_and_gradients(expression, points, params=None, globals_=None):
    """Per-point values and d/d(x, y, z) of an expression of x, y, z from OpenMM (float64)."""
    points = np.asarray(points, dtype=np.float64)
    context = _context(_external(expression, points, params, globals_), len(points))
    context.setPositions(points)
    state = context.getState(getForces=True)
    gradients = -state.getForces(asNumpy=True).value_in_unit(KJ / openmm.unit.nanometer)
    values = []
    for i in range(len(points)):  # one particle at a time: the others at a point where the energy is known
        one_params = {k: v[i : i + 1] for k, v in (params or {}).items()}
        single = _context(_external(expression, points[i : i + 1], one_params, globals_), 1)
        single.setPositions(points[i : i + 1])
        values.append(single.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    return np.array(values), np.asarray(gradients)


def torch_values_and_gradients(expression, points, params=None, globals_=None, functions=None, rename=None):
    compiled = compile_expression(expression, functions)
    xyz = torch.tensor(np.asarray(points), dtype=torch.float64, requires_grad=True)
    names = rename or ("x", "y", "z")
    values = {names[k]: xyz[:, k] for k in range(3)}
    values.update({k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in (params or {}).items()})
    values.update({k: float(v) for k, v in (globals_ or {}).items()})
    out = compiled(values)
    out = torch.broadcast_to(out, (len(points),))
    (grad,) = torch.autograd.grad(out.sum(), xyz, allow_unused=True)
    grad = torch.zeros_like(xyz) if grad is None else grad
    return out.detach().numpy(), grad.numpy()


def assert_matches_openmm(expression, points, params=None, globals_=None, rtol=RTOL):
    expected_values, expected_grads = openmm_values_and_gradients(expression, points, params, globals_)
    values, grads = torch_values_and_gradients(expression, points, params, globals_)
    np.testing.assert_allclose(values, expected_values, rtol=rtol, atol=1e-12, err_msg=expression)
    finite = np.abs(expected_grads[np.isfinite(expected_grads)])
    scale = max(1.0, float(finite.max()) if finite.size else 1.0)
    np.testing.assert_allclose(grads, expected_grads, rtol=rtol, atol=1e-12 * scale, err_msg=expression)


# ---------------------------------------------------------------------------------------------
# Every built-in function, each in its domain, against OpenMM
# ---------------------------------------------------------------------------------------------

RNG = np.random.default_rng(20240611)
POINTS = RNG.uniform(-0.9, 0.9, size=(7, 3))
POSITIVE = RNG.uniform(0.2, 2.0, size=(7, 3))

FUNCTION_CASES = [
    ("sqrt(x)", POSITIVE),
    ("exp(x) + exp(-y*z)", POINTS),
    ("log(x) * y", POSITIVE),
    ("sin(x) + cos(y) * z", POINTS),
    ("sec(x) + csc(y + 3)", POINTS),
    ("tan(x) + cot(y + 2)", POINTS),
    ("asin(x) + acos(y) + atan(3*z)", POINTS),
    ("atan2(y, x) + atan2(-z, x)", POINTS),
    ("sinh(x) + cosh(y) + tanh(2*z)", POINTS),
    ("erf(2*x) + erfc(y - z)", POINTS),
    ("step(x)*y + step(-y)*z^2", POINTS),
    ("delta(x)*100 + delta(0*y)*z + x", POINTS),
    ("square(x - y) + cube(z) + recip(x + 2)", POINTS),
    ("min(x, y) + max(y, z)^2", POINTS),
    ("abs(x) * y + abs(y - z)", POINTS),
    ("floor(5*x) * y + ceil(5*y) * z", POINTS),
    ("select(step(x), y, z^2) + select(x, 1, 2)", POINTS),
    ("x^y + (y + 2)^1.5 + z^3 + z^-2", POSITIVE),
    ("2^x + x^2.5 - 3^-y", POSITIVE),
    ("(x - y)^4 + (x - z)^-1", POSITIVE + np.array([[1.0, 0.0, 0.0]])),
]


@pytest.mark.parametrize("expression, points", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_every_function_matches_openmm(expression, points):
    assert_matches_openmm(expression, points)


OPERATOR_CASES = [
    "-x^2",  # ^ binds tighter than unary minus
    "-x*y",  # unary minus binds tighter than *
    "x*-y + x^-y",
    "2^-x^2",
    "x^y^z",  # right-associative power
    "x - y - z",  # left-associative
    "x / y / z",
    "2*x + 3*y^2 - z/4",
    "(x + y)*(z - x)/(1 + y^2)",
    "--x + -(-y) - -z",
    "1e-3*x + .5*y + 2.5E+1*z + 3.e0",
    "x*x*x + x*x + y*y*y*y",
    "sqrt(x^2 + y^2 + z^2)",
    " ( x+y ) * ( y-z ) ",
]


@pytest.mark.parametrize("expression", OPERATOR_CASES)
def test_operator_precedence_matches_openmm(expression):
    assert_matches_openmm(expression, POSITIVE)


def test_definitions_parameters_and_globals_match_openmm():
    params = {"k": RNG.uniform(0.5, 2.0, 7), "x0": RNG.uniform(-0.5, 0.5, 7)}
    globals_ = {"scale": 1.7, "shift": -0.3}
    expression = "scale*k*a*b + shift; a = (x - x0)^2 + c; b = exp(-c); c = y*z + shift"
    assert_matches_openmm(expression, POINTS, params, globals_)
    # A later clause may use one defined after it in the text (Lepton reads them last to first).
    assert_matches_openmm("u + v; u = 2*v; v = x*y", POINTS)


def test_select_and_step_edge_cases_match_openmm():
    points = np.array([[0.0, 1.0, 2.0], [-0.0, 1.0, 2.0], [1e-300, 1.0, 2.0], [-1e-300, 1.0, 2.0], [0.5, 0.0, -1.0]])
    for expression in [
        "step(x)*y + delta(x)*z + select(x, y, z)",
        "select(x, 1/x, 0)",  # the branch not taken has an infinite derivative at x = 0
        "select(y, log(abs(x)) * y, 2*z)",
        "step(x - 1)*sqrt(x - 1)",
        "min(x, 0) + max(x, 0)*y",
        "sqrt(x^2)",  # Lepton turns it into abs(x): derivative +1 at 0
        "abs(x) + 2*floor(x) + ceil(x)",
    ]:
        assert_matches_openmm(expression, points)


def test_known_values():
    values = {"x": torch.tensor([0.0, -0.0, 2.0, -2.0], dtype=torch.float64)}
    expected = {
        "step(x)": [1, 1, 1, 0],
        "delta(x)": [1, 1, 0, 0],
        "select(x, 5, 7)": [7, 7, 5, 5],
        "min(x, 1)": [0, 0, 1, -2],
        "max(x, 1)": [1, 1, 2, 1],
        "floor(x/3)": [0, 0, 0, -1],
        "ceil(x/3)": [0, 0, 1, -0.0],
        "abs(x)": [0, 0, 2, 2],
        "-x^2": [-0.0, -0.0, -4, -4],
        "2^3^2 + x*0": [512] * 4,
        "recip(x+4)": [0.25, 0.25, 1 / 6, 0.5],
    }
    for text, want in expected.items():
        got = compile_expression(text)(values)
        np.testing.assert_allclose(torch.broadcast_to(got, (4,)).numpy(), want, rtol=1e-15, err_msg=text)


def test_discontinuous_functions_have_zero_gradient_and_no_nans():
    x = torch.tensor([-1.5, 0.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    for text in ["step(x)", "delta(x)", "floor(x)", "ceil(x)", "step(x)*3 + delta(x - 2)"]:
        out = compile_expression(text)({"x": x})
        if out.requires_grad:
            (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
            assert grad is None or torch.all(grad == 0), text
    # Double where: the untaken branch's infinite derivative must not leak as NaN.
    for text, want in [
        ("select(x, 1/x, 0)", [-1 / 2.25, 0.0, -1 / 0.09, -0.25]),
        ("select(step(x), sqrt(x), 0)", [0.0, math.inf, 0.5 / math.sqrt(0.3), 0.5 / math.sqrt(2.0)]),
        ("min(x, 0) * 0 + max(x, 1e-300)^0.5", None),
    ]:
        out = compile_expression(text)({"x": x})
        (grad,) = torch.autograd.grad(out.sum(), x)
        if want is not None:
            np.testing.assert_allclose(grad.numpy(), want, rtol=1e-14, err_msg=text)
    # On a tie min takes the derivative of its second argument and max of its first (Lepton's
    # select(step(a - b), ...)); abs has derivative +1 at 0.
    y = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    for text, want in [("min(y, z)", (0.0, 1.0)), ("max(y, z)", (1.0, 0.0)), ("abs(y) + 0*z", (1.0, 0.0))]:
        out = compile_expression(text)({"y": y, "z": z})
        grads = torch.autograd.grad(out, (y, z), allow_unused=True)
        got = tuple(0.0 if g is None else float(g) for g in grads)
        assert got == want, text


def test_broadcasting_dtype_and_variables():
    compiled = compile_expression("k*(r - r0)^2 + g; g = eps*2")
    assert isinstance(compiled, CompiledExpression)
    assert compiled.variables == frozenset({"k", "r", "r0", "eps"})
    r = torch.rand(5, 3, dtype=torch.float64)
    k, r0 = torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    out = compiled({"r": r, "k": k, "r0": r0, "eps": 0.25})
    assert out.shape == (5, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, k * (r - r0) ** 2 + 0.5)
    out32 = compiled({"r": r.float(), "k": k.float(), "r0": r0.float(), "eps": 0.25})
    assert out32.dtype == torch.float32
    # Constants fold; a constant expression gives a 0-d tensor.
    folded = compile_expression("2*3 + 4^0.5")
    assert folded.constant == 8.0 and folded.variables == frozenset()
    assert float(folded({})) == 8.0
    # 0*x is 0 (as Lepton's optimizer), so x is not needed.
    assert compile_expression("0*log(x) + y").variables == frozenset({"y"})


def test_missing_variable_names_it():
    compiled = compile_expression("a*r + b")
    with pytest.raises(MissingVariableError, match="'b'"):
        compiled({"a": 1.0, "r": torch.ones(3)})
    with pytest.raises(KeyError):
        compiled({"a": 1.0, "r": torch.ones(3)})


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("k*(r - ", "unexpected end"),
        ("(r + 1", "unbalanced parentheses"),
        ("r + 1)", "unexpected text ')'"),
        ("foo(r)", "unknown function 'foo'"),
        ("sin(r, 2)", "wrong number of arguments"),
        ("r r", "unexpected text 'r'"),
        ("*r", "unexpected token '*'"),
        ("+r", "unexpected token '+'"),
        ("r; = 2", "does not specify a name"),
        ("r; k 2", "does not specify a name"),
        ("", "empty expression"),
        ("sqrt (r)", "unexpected text '('"),
    ],
)
def test_parse_errors_are_clear(text, fragment):
    with pytest.raises(UnsupportedForceError) as info:
        compile_expression(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ExpressionError)
    message = str(info.value)
    assert fragment in message and repr(text) in message
    if text not in ("",) and "specify a name" not in fragment:
        assert "position" in message


def test_openmm_rejects_what_we_reject():
    """The same syntax errors also fail in OpenMM (sanity check of the oracle's grammar)."""
    for text in ["x*(y - ", "+x", "sqrt (x)", "foo(x)"]:
        with pytest.raises(Exception):
            _context(_external(text, np.zeros((1, 3))), 1)


def test_periodic_distance_with_box():
    box = torch.tensor([[2.0, 0.0, 0.0], [0.5, 2.5, 0.0], [-0.3, 0.4, 3.0]], dtype=torch.float64)
    points = RNG.uniform(-3, 3, size=(6, 3))
    params = {"x0": RNG.uniform(-1, 1, 6), "y0": RNG.uniform(-1, 1, 6), "z0": RNG.uniform(-1, 1, 6)}
    expression = "periodicdistance(x, y, z, x0, y0, z0)^2 + periodicdistance(x, y, z, x0, y0, z0)"
    force = _external(expression, points, params)
    context = reference_context(single_force_system(force, [1.0] * len(points), box))
    context.setPositions(points)
    state = context.getState(getEnergy=True, getForces=True)
    compiled = compile_expression(expression)
    xyz = torch.tensor(points, requires_grad=True)
    values = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], **{k: torch.tensor(v) for k, v in params.items()}}
    energy = compiled(values, box=box).sum()
    (grad,) = torch.autograd.grad(energy, xyz)
    np.testing.assert_allclose(float(energy.detach()), state.getPotentialEnergy().value_in_unit(KJ), rtol=RTOL)
    np.testing.assert_allclose(-grad.numpy(), state.getForces(asNumpy=True)._value, rtol=RTOL, atol=1e-10)
    # At zero distance the derivative is 0 (OpenMM's), not NaN.
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    d = compile_expression("periodicdistance(x, y, z, 0, 0, 0)")({"x": p[0], "y": p[1], "z": p[2]})
    assert torch.all(torch.autograd.grad(d, p)[0] == 0)


# ---------------------------------------------------------------------------------------------
# Tabulated functions against OpenMM (one-particle CustomCompoundBondForce: x1, y1, z1)
# ---------------------------------------------------------------------------------------------


def _tabulated_case(kind: str):
    rng = np.random.default_rng(["c1", "c1p", "c2", "c2p", "c3", "c3p", "d1", "d2", "d3"].index(kind))
    if kind == "c1":
        return openmm.Continuous1DFunction(rng.normal(size=9), -0.5, 1.5), "g(x1) + 0.1*x1", 1
    if kind == "c1p":
        v = rng.normal(size=9)
        v[-1] = v[0]
        return openmm.Continuous1DFunction(v, -0.5, 1.5, True), "g(2*x1) + 0.1*x1", 1
    if kind == "c2":
        return openmm.Continuous2DFunction(5, 4, rng.normal(size=20), -1.0, 1.5, -0.5, 1.0), "g(x1, y1) + 0.1*x1", 2
    if kind == "c2p":
        v = rng.normal(size=(4, 5))
        v[:, -1] = v[:, 0]
        v[-1, :] = v[0, :]
        return openmm.Continuous2DFunction(5, 4, v.ravel(), -1.0, 1.5, -0.5, 1.0, True), "g(x1, 2*y1) + 0.1*x1", 2
    if kind == "c3":
        function = openmm.Continuous3DFunction(4, 3, 5, rng.normal(size=60), -1, 1, -0.5, 1.0, -1.5, 1.5)
        return function, "g(x1, y1, z1)", 3
    if kind == "c3p":
        v = rng.normal(size=(5, 3, 4))
        v[:, :, -1] = v[:, :, 0]
        v[:, -1, :] = v[:, 0, :]
        v[-1] = v[0]
        return openmm.Continuous3DFunction(4, 3, 5, v.ravel(), -1, 1, -0.5, 1.0, -1.5, 1.5, True), "g(x1, y1, 3*z1)", 3
    if kind == "d1":
        return openmm.Discrete1DFunction(rng.normal(size=5)), "g(4*x1)*x1 + x1", 1
    if kind == "d2":
        return openmm.Discrete2DFunction(3, 4, rng.normal(size=12)), "g(4*x1, 4*y1)*y1 + x1", 2
    return openmm.Discrete3DFunction(2, 3, 2, rng.normal(size=12)), "g(4*x1, 4*y1, 4*z1)*z1 + y1", 3


@pytest.mark.parametrize("kind", ["c1", "c1p", "c2", "c2p", "c3", "c3p", "d1", "d2", "d3"])
def test_tabulated_functions_match_openmm(kind):
    function, expression, _ = _tabulated_case(kind)
    force = openmm.CustomCompoundBondForce(1, expression)
    force.addTabulatedFunction("g", function)  # the force now owns `function`: read it back from the force
    rng = np.random.default_rng(99)
    points = rng.uniform(-2.0, 2.0, size=(60, 3))
    if kind.startswith("d"):
        # exact half-integers after scaling by 4 test C round() (halves away from zero)
        points[:20] = np.round(points[:20] * 8) / 8
        points[20:24] = [[-0.125, 0.125, 0.375], [0.625, -0.375, 0.875], [10.0, -10.0, 0.0], [0.5, 0.5, 0.5]]
    else:
        points[:5] = [[-0.5, -0.5, -1.5], [1.5, 1.0, 1.5], [1.0, 0.25, 0.0], [0.25, -0.5, 1.5], [-1.0, 1.0, -1.5]]
    for i in range(len(points)):
        force.addBond([i], [])
    context = _context(force, len(points))
    context.setPositions(points)
    state = context.getState(getEnergy=True, getForces=True)
    functions = tabulated_functions_of(force)
    assert set(functions) == {"g"}
    compiled = compile_expression(expression, functions)
    assert compiled.variables <= {"x1", "y1", "z1"}
    xyz = torch.tensor(points, requires_grad=True)
    values = {"x1": xyz[:, 0], "y1": xyz[:, 1], "z1": xyz[:, 2]}
    energy = torch.broadcast_to(compiled(values), (len(points),)).sum()
    (grad,) = torch.autograd.grad(energy, xyz)
    np.testing.assert_allclose(float(energy.detach()), state.getPotentialEnergy().value_in_unit(KJ), rtol=1e-9)
    np.testing.assert_allclose(-grad.numpy(), state.getForces(asNumpy=True)._value, rtol=1e-9, atol=1e-9)

    # Per-point values too (the total could hide compensating errors).
    single_force = openmm.CustomCompoundBondForce(1, expression)
    single_force.addTabulatedFunction("g", _tabulated_case(kind)[0])
    single_force.addBond([0], [])
    single = _context(single_force, 1)
    per_point = compiled(values).detach()
    for i in range(0, len(points), 7):
        single.setPositions(points[i : i + 1])
        want = single.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
        assert abs(float(per_point[i]) - want) <= 1e-9 * max(1.0, abs(want)), (i, points[i])


def test_tabulated_function_modules_move_with_the_expression():
    values = np.sin(np.linspace(0, 3, 10))
    function = tabulated_function(openmm.Continuous1DFunction(values, 0.0, 3.0))
    unused = tabulated_function(openmm.Discrete1DFunction([1.0]))
    compiled = compile_expression("2*g(r)", {"g": function, "unused": unused})
    assert compiled.function_names == frozenset({"g"})
    assert any(b.dtype == torch.float64 for b in compiled.buffers())
    compiled32 = compiled.to(torch.float32)
    assert all(b.dtype == torch.float32 for b in compiled32.buffers() if b.is_floating_point())
    r = torch.linspace(-0.5, 3.5, 17)
    out = compiled32({"r": r})
    assert out.dtype == torch.float32
    ref = compiled.to(torch.float64)({"r": r.double()})
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert float(ref[0]) == 0.0 and float(ref[-1]) == 0.0  # outside [min, max] a non-periodic table is 0


def test_tabulated_function_errors():
    with pytest.raises(UnsupportedForceError, match="first and last"):
        tabulated_function(openmm.Continuous1DFunction([0.0, 1.0, 2.0], 0.0, 1.0, True))
    with pytest.raises(UnsupportedForceError, match="wrong number of arguments"):
        compile_expression("g(r, r)", {"g": tabulated_function(openmm.Continuous1DFunction([0.0, 1.0], 0.0, 1.0))})
