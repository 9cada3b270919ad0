"""OpenMM's (Lepton) expression language compiled into batched torch.

`compile_expression` parses the energy expression of a custom OpenMM force and returns a
`CompiledExpression`: a ``torch.nn.Module`` whose ``forward(values)`` evaluates it with
broadcasting, for example ``r`` of shape ``[B, K]`` together with per-term parameters of shape
``[K]`` and global parameters as 0-d tensors or floats. Derivatives come from autograd.

Semantics follow Lepton as OpenMM uses it (``Parser::parse(...).optimize()``):

- syntax: numbers (``1``, ``1.5``, ``.5``, ``1e-3``), ``+ - * / ^``, parentheses, function calls;
  ``^`` binds tighter than unary minus and is right-associative (``-x^2 = -(x^2)``,
  ``2^3^2 = 2^9``), unary minus binds tighter than ``* /`` (``-a*b = (-a)*b``) and may follow
  ``^`` (``2^-x``). There is no unary plus.
- ``"expr; name1 = e1; name2 = e2"``: the first clause is the expression, the later clauses
  define intermediates. As in Lepton the clauses are read from the last to the first, so a
  definition can use the names defined *after* it in the text (a name defined before it is an
  ordinary free variable there).
- functions: sqrt exp log sin cos sec csc tan cot asin acos atan atan2 sinh cosh tanh erf erfc
  step delta square cube recip min max abs floor ceil select, plus the ``functions`` the caller
  passes (tabulated functions; they take precedence over built-ins of the same name, like
  Lepton's custom functions), plus ``periodicdistance(x1, y1, z1, x2, y2, z2)`` (the distance of
  two points under the minimum image of the ``box`` given to ``forward``; a plain distance when
  ``box`` is None), which OpenMM registers for CustomExternalForce.
- ``step(x) = 1 if x >= 0 else 0``, ``delta(x) = 1 if x == 0 else 0``,
  ``select(x, a, b) = a if x != 0 else b``; step, delta, floor and ceil have zero derivative;
  ``abs`` has derivative +1 at 0 (and ``abs(-0.0) = +0.0``); on a tie ``min`` takes the
  derivative of its second argument and ``max`` of its first, as Lepton's ``differentiate``
  (``select(step(a - b), ...)``) does.
- Lepton's ``optimize()`` rewrites that change results (not only rounding) are applied too:
  ``0*x -> 0``, ``0/x -> 0``, ``x/x -> 1``, ``x-x -> 0``, ``0^x -> 0``, ``1^x -> 1``, ``x^0 -> 1``,
  ``sqrt(x^2) -> abs(x)`` (finite derivative at 0), ``(sqrt(x))^2 -> x``,
  ``select(c, a, a) -> a``; constant subexpressions are folded (in float64).

Gradients are NaN-free where Lepton's are finite: inside the branches of ``select`` and
``min``/``max``, inputs that require grad enter through ``torch.where(branch_taken, v, v.detach())``
(the "double where"), so an infinite local derivative in the branch that is not taken (such as
``select(r, 1/r, 0)`` at ``r = 0``) contributes nothing instead of ``0 * inf = NaN``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.energy.torch_forces.pairs import minimum_image

__all__ = [
    "BUILTIN_FUNCTIONS",
    "CompiledExpression",
    "ExpressionError",
    "MissingVariableError",
    "compile_expression",
]


class ExpressionError(UnsupportedForceError, ValueError):
    """An expression that does not parse (the message quotes it and says where it fails)."""


class MissingVariableError(KeyError):
    """``CompiledExpression.forward`` was not given a value for one of the expression's variables."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------------
# Expression tree
# ----------------------------------------------------------------------------------------------

_CONST, _VAR, _OP, _CALL = "const", "var", "op", "call"


class _Node:
    """One node of the expression tree: a constant, a variable, a built-in op or a custom call.

    ``key`` is a hashable structural identity (Lepton's ``ExpressionTreeNode ==``), used for the
    ``x - x``, ``x / x``, ``x * x`` and ``select(c, a, a)`` rewrites.
    """

    __slots__ = ("kind", "name", "value", "children", "key")

    def __init__(self, kind: str, name: str = "", value: float = 0.0, children: tuple = ()):
        self.kind = kind
        self.name = name
        self.value = float(value)
        self.children = tuple(children)
        if kind == _CONST:
            self.key = (kind, self.value)
        elif kind == _VAR:
            self.key = (kind, name)
        else:
            self.key = (kind, name) + tuple(child.key for child in self.children)

    def is_const(self, value: float | None = None) -> bool:
        return self.kind == _CONST and (value is None or self.value == value)

    def __repr__(self) -> str:
        if self.kind == _CONST:
            return repr(self.value)
        if self.kind == _VAR:
            return self.name
        return f"{self.name}({', '.join(map(repr, self.children))})"


def _const(value: float) -> _Node:
    return _Node(_CONST, value=value)


def _op(name: str, *children: _Node) -> _Node:
    return _Node(_OP, name=name, children=children)


# ----------------------------------------------------------------------------------------------
# Built-in operations (torch implementations shared by evaluation and constant folding)
# ----------------------------------------------------------------------------------------------


def _step(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0).to(x.dtype)


def _delta(x: torch.Tensor) -> torch.Tensor:
    return (x == 0).to(x.dtype)


def _abs(x: torch.Tensor) -> torch.Tensor:
    # Lepton's derivative of abs is 2*step(x) - 1: +1 at x = 0 (torch.abs gives 0 there);
    # "+ 0.0" turns abs(-0.0) into +0.0 as std::abs does (1/abs(-0.0) must be +inf).
    return torch.where(x >= 0, x, -x) + 0.0


def _pow(x, y):
    if not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor):
        return torch.pow(torch.as_tensor(x, dtype=torch.float64), y)
    return torch.pow(x, y)


#: name -> (number of arguments, torch implementation). min, max and select are evaluated
#: specially (masked branches) but are listed here for parsing and folding.
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg": torch.neg,
    "sqrt": torch.sqrt,
    "exp": torch.exp,
    "log": torch.log,
    "sin": torch.sin,
    "cos": torch.cos,
    "sec": lambda x: 1.0 / torch.cos(x),
    "csc": lambda x: 1.0 / torch.sin(x),
    "tan": torch.tan,
    "cot": lambda x: 1.0 / torch.tan(x),
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "erf": torch.erf,
    "erfc": torch.erfc,
    "step": _step,
    "delta": _delta,
    "square": lambda x: x * x,
    "cube": lambda x: x * x * x,
    "recip": torch.reciprocal,
    "abs": _abs,
    "floor": torch.floor,
    "ceil": torch.ceil,
}

_BINARY: dict[str, Callable] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": _pow,
    "atan2": torch.atan2,
    # Values as std::min / std::max; Lepton's derivative rule on a tie (min: second argument,
    # max: first) is applied in evaluation, where these become masked selects.
    "min": lambda a, b: torch.where(a - b >= 0, b, a),
    "max": lambda a, b: torch.where(a - b >= 0, a, b),
}

#: Functions callable by name in expressions and their number of arguments.
BUILTIN_FUNCTIONS: dict[str, int] = {
    **{name: 1 for name in _UNARY if name != "neg"},
    "atan2": 2,
    "min": 2,
    "max": 2,
    "select": 3,
    "periodicdistance": 6,
}

_OPERATORS = "+-*/^"
_OPERATOR_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow"}
_PRECEDENCE = {"+": 0, "-": 0, "*": 1, "/": 1, "^": 3}
_LEFT_ASSOCIATIVE = {"+": True, "-": True, "*": True, "/": True, "^": False}
_UNARY_MINUS_PRECEDENCE = 2


# ----------------------------------------------------------------------------------------------
# Parser (the algorithm of Lepton's Parser.cpp: a precedence-climbing recursive descent)
# ----------------------------------------------------------------------------------------------

_NUMBER, _OPERATOR, _VARIABLE, _FUNCTION, _LPAREN, _RPAREN, _COMMA = range(7)


class _Token:
    __slots__ = ("text", "type", "pos")

    def __init__(self, text: str, type_: int, pos: int):
        self.text, self.type, self.pos = text, type_, pos


def _tokenize(text: str, offset: int) -> list[_Token]:
    """Lepton's tokens of ``text``; positions are ``offset`` + index (for error messages)."""
    tokens = []
    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c.isspace():
            pos += 1
            continue
        start = pos
        if c == "(":
            tokens.append(_Token("(", _LPAREN, offset + start))
            pos += 1
        elif c == ")":
            tokens.append(_Token(")", _RPAREN, offset + start))
            pos += 1
        elif c == ",":
            tokens.append(_Token(",", _COMMA, offset + start))
            pos += 1
        elif c in _OPERATORS:
            tokens.append(_Token(c, _OPERATOR, offset + start))
            pos += 1
        elif c == "." or c.isdigit():
            found_decimal, found_exp = c == ".", False
            pos += 1
            while pos < n:
                c = text[pos]
                if c.isdigit():
                    pos += 1
                elif c == "." and not found_decimal:
                    found_decimal = True
                    pos += 1
                elif c in "eE" and not found_exp:
                    found_exp = True
                    if pos < n - 1 and text[pos + 1] in "+-":
                        pos += 1
                    pos += 1
                else:
                    break
            tokens.append(_Token(text[start:pos], _NUMBER, offset + start))
        else:
            # A variable, or a function name with its opening parenthesis.
            while pos < n:
                c = text[pos]
                if c == "(":
                    pos += 1
                    tokens.append(_Token(text[start:pos], _FUNCTION, offset + start))
                    break
                if c in _OPERATORS or c in ",)" or c.isspace():
                    tokens.append(_Token(text[start:pos], _VARIABLE, offset + start))
                    break
                pos += 1
            else:
                tokens.append(_Token(text[start:pos], _VARIABLE, offset + start))
    return tokens


def _parse_number(text: str) -> float:
    """The value of a number token as C++ ``stringstream >> double`` reads it (longest valid prefix)."""
    for end in range(len(text), 0, -1):
        try:
            return float(text[:end])
        except ValueError:
            continue
    raise ValueError(text)


class _Parser:
    def __init__(self, expression: str, tokens: list[_Token], definitions: dict[str, _Node], functions: Mapping):
        self.expression = expression
        self.tokens = tokens
        self.definitions = definitions
        self.functions = functions
        self.pos = 0

    def error(self, message: str, token: _Token | None = None) -> ExpressionError:
        where = f" at position {token.pos}" if token is not None else ""
        return ExpressionError(f"cannot parse expression {self.expression!r}: {message}{where}")

    def parse(self, precedence: int) -> _Node:
        tokens = self.tokens
        if self.pos == len(tokens):
            if not tokens:
                raise self.error("empty expression")
            last = tokens[-1]
            raise self.error(f"unexpected end of expression after {last.text!r}", last)
        token = tokens[self.pos]
        if token.type == _NUMBER:
            try:
                result = _const(_parse_number(token.text))
            except ValueError:
                raise self.error(f"malformed number {token.text!r}", token) from None
            self.pos += 1
        elif token.type == _VARIABLE:
            defined = self.definitions.get(token.text)
            result = defined if defined is not None else _Node(_VAR, name=token.text)
            self.pos += 1
        elif token.type == _LPAREN:
            self.pos += 1
            result = self.parse(0)
            if self.pos == len(tokens) or tokens[self.pos].type != _RPAREN:
                raise self.error("unbalanced parentheses", token)
            self.pos += 1
        elif token.type == _FUNCTION:
            self.pos += 1
            args = []
            while True:
                args.append(self.parse(0))
                if self.pos < len(tokens) and tokens[self.pos].type == _COMMA:
                    self.pos += 1
                    continue
                break
            if self.pos == len(tokens) or tokens[self.pos].type != _RPAREN:
                raise self.error("unbalanced parentheses", token)
            self.pos += 1
            result = self.function(token, args)
        elif token.type == _OPERATOR and token.text == "-":
            self.pos += 1
            result = _op("neg", self.parse(_UNARY_MINUS_PRECEDENCE))
        else:
            raise self.error(f"unexpected token {token.text!r}", token)

        while self.pos < len(tokens) and tokens[self.pos].type == _OPERATOR:
            token = tokens[self.pos]
            op_precedence = _PRECEDENCE[token.text]
            if op_precedence < precedence:
                return result
            self.pos += 1
            right = self.parse(op_precedence + 1 if _LEFT_ASSOCIATIVE[token.text] else op_precedence)
            result = _op(_OPERATOR_NAMES[token.text], result, right)
        return result

    def function(self, token: _Token, args: list[_Node]) -> _Node:
        name = token.text[:-1]
        if name in self.functions:
            expected = getattr(self.functions[name], "num_arguments", None)
            if expected is not None and expected != len(args):
                raise self.error(
                    f"wrong number of arguments to function {name!r} ({len(args)}, expected {expected})", token
                )
            return _Node(_CALL, name=name, children=tuple(args))
        if name not in BUILTIN_FUNCTIONS:
            raise self.error(f"unknown function {name!r}", token)
        if BUILTIN_FUNCTIONS[name] != len(args):
            expected = BUILTIN_FUNCTIONS[name]
            raise self.error(
                f"wrong number of arguments to function {name!r} ({len(args)}, expected {expected})", token
            )
        return _op(name, *args)


def _parse(expression: str, functions: Mapping) -> _Node:
    """Parse as Lepton: split at ';' from the end, define the clauses last to first, then the first."""
    clauses = []  # (text, offset), last clause first
    primary_end = len(expression)
    while True:
        pos = expression.rfind(";", 0, primary_end)
        if pos < 0:
            break
        sub = expression[pos + 1 : primary_end]
        if sub.strip():
            clauses.append((sub, pos + 1))
        primary_end = pos
    definitions: dict[str, _Node] = {}
    for sub, offset in clauses:
        equals = sub.find("=")
        if equals < 0 or not sub[:equals].strip():
            raise ExpressionError(
                f"cannot parse expression {expression!r}: subexpression {sub.strip()!r} "
                f"(at position {offset}) does not specify a name"
            )
        name = sub[:equals].strip()
        parser = _Parser(expression, _tokenize(sub[equals + 1 :], offset + equals + 1), definitions, functions)
        node = parser.parse(0)
        if parser.pos != len(parser.tokens):
            bad = parser.tokens[parser.pos]
            raise parser.error(f"unexpected text {bad.text!r} at end of subexpression {name!r}", bad)
        definitions[name] = node
    parser = _Parser(expression, _tokenize(expression[:primary_end], 0), definitions, functions)
    node = parser.parse(0)
    if parser.pos != len(parser.tokens):
        bad = parser.tokens[parser.pos]
        raise parser.error(f"unexpected text {bad.text!r} at end of expression", bad)
    return node


# ----------------------------------------------------------------------------------------------
# Optimisation: constant folding and Lepton's value-changing rewrites
# ----------------------------------------------------------------------------------------------


def _fold(name: str, values: list[float]) -> float:
    args = [torch.tensor(v, dtype=torch.float64) for v in values]
    if name in _UNARY:
        out = _UNARY[name](args[0])
    elif name in _BINARY:
        out = _BINARY[name](*args)
    elif name == "select":
        out = args[1] if values[0] != 0.0 else args[2]
    elif name == "periodicdistance":  # no box at build time: only fold the non-periodic value
        return math.sqrt(sum((values[k] - values[k + 3]) ** 2 for k in range(3)))
    else:  # pragma: no cover - every built-in is listed above
        raise AssertionError(name)
    return float(out)


def _simplify(node: _Node, cache: dict) -> _Node:
    """One bottom-up pass of constant folding and Lepton's rewrites (shared subtrees once)."""
    if node.kind in (_CONST, _VAR):
        return node
    cached = cache.get(id(node))
    if cached is not None:
        return cached[1]
    children = tuple(_simplify(child, cache) for child in node.children)
    result = _rewrite(node, children)
    cache[id(node)] = (node, result)  # keep node alive so its id is not reused
    return result


def _rewrite(node: _Node, children: tuple) -> _Node:
    if node.kind == _CALL:
        return _Node(_CALL, name=node.name, children=children)
    name = node.name
    if name != "periodicdistance" and all(child.kind == _CONST for child in children):
        return _const(_fold(name, [child.value for child in children]))
    a = children[0]
    b = children[1] if len(children) > 1 else None
    if name == "add":
        if a.is_const(0.0):
            return b
        if b.is_const(0.0):
            return a
    elif name == "sub":
        if a.key == b.key:
            return _const(0.0)
        if a.is_const(0.0):
            return _op("neg", b)
        if b.is_const(0.0):
            return a
    elif name == "mul":
        if a.is_const(0.0) or b.is_const(0.0):
            return _const(0.0)
        if a.is_const(1.0):
            return b
        if b.is_const(1.0):
            return a
        if a.key == b.key:
            return _op("square", a)
    elif name == "div":
        if a.key == b.key:
            return _const(1.0)
        if a.is_const(0.0):
            return _const(0.0)
        if a.is_const(1.0):
            return _op("recip", b)
        if b.is_const(1.0):
            return a
    elif name == "pow":
        if a.is_const(0.0):
            return _const(0.0)
        if a.is_const(1.0):
            return _const(1.0)
        if b.kind == _CONST:
            special = {0.0: None, 1.0: "", -1.0: "recip", 2.0: "square", 3.0: "cube", 0.5: "sqrt"}
            if b.value in special:
                target = special[b.value]
                if target is None:
                    return _const(1.0)
                return a if target == "" else _op(target, a)
    elif name == "neg":
        if a.kind == _OP and a.name == "neg":
            return a.children[0]
    elif name == "sqrt":
        if a.kind == _OP and a.name == "square":
            return _op("abs", a.children[0])
    elif name == "square":
        if a.kind == _OP and a.name == "sqrt":
            return a.children[0]
    elif name == "select":
        if children[1].key == children[2].key:
            return children[1]
    return _op(name, *children)


def _optimize(node: _Node) -> _Node:
    while True:
        simplified = _simplify(node, {})
        if simplified.key == node.key:
            return simplified
        node = simplified


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _periodic_distance(args: list[torch.Tensor], box: torch.Tensor | None) -> torch.Tensor:
    """OpenMM's ``periodicdistance``: minimum image c, b, a as ReferencePointDistanceFunction."""
    delta = torch.stack(torch.broadcast_tensors(*(args[k] - args[k + 3] for k in range(3))), dim=-1)
    if box is not None:
        delta = minimum_image(delta, box)
    r2 = (delta * delta).sum(-1)
    positive = r2 > 0
    # OpenMM's derivative is 0 at r = 0; sqrt alone would give NaN there.
    return torch.where(positive, torch.sqrt(torch.where(positive, r2, torch.ones_like(r2))), torch.zeros_like(r2))


class _Evaluation:
    """One forward pass: variable values, the reference dtype/device and a per-pass cache."""

    def __init__(self, values: Mapping, variables: frozenset, text: str, modules: Mapping, box):
        tensors = [v for v in values.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        dtype = torch.get_default_dtype()
        device = None
        for tensor in tensors:
            dtype = tensor.dtype if device is None else torch.promote_types(dtype, tensor.dtype)
            device = tensor.device if device is None else device
        if device is None and box is not None:
            device, dtype = box.device, box.dtype
        self.dtype, self.device = dtype, device if device is not None else torch.device("cpu")
        self.values = {}
        for name in variables:
            if name not in values:
                raise MissingVariableError(
                    f"expression {text!r} needs a value for variable {name!r} "
                    f"(given: {', '.join(sorted(map(str, values))) or 'nothing'})"
                )
            value = values[name]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
            self.values[name] = value
        self.modules = modules
        self.box = box
        self.cache: dict = {}
        self.grad = torch.is_grad_enabled()

    def tensor(self, value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        return torch.as_tensor(value, dtype=self.dtype, device=self.device)

    def __call__(self, node: _Node, gate: torch.Tensor | None = None):
        if node.kind == _CONST:
            return node.value
        if node.kind == _VAR:
            value = self.values[node.name]
            if gate is not None and value.requires_grad:
                # Double where: the gradient that reaches `value` from a branch not taken is
                # dropped by where's backward (a select), not multiplied by zero.
                return torch.where(gate, value, value.detach())
            return value
        key = (id(node), id(gate))
        cached = self.cache.get(key)
        if cached is not None:
            return cached[0]
        result = self.compute(node, gate)
        self.cache[key] = (result, node, gate)  # keep node and gate alive: their ids stay unique
        return result

    def compute(self, node: _Node, gate):
        name = node.name
        if node.kind == _CALL:
            args = [self.tensor(self(child, gate)) for child in node.children]
            return self.modules[name](*args)
        if name == "select":
            mask = self.tensor(self(node.children[0], gate)) != 0
            return self.masked(mask, node.children[1], node.children[2], gate)
        if name in ("min", "max"):
            a, b = node.children
            a_value, b_value = self(a, gate), self(b, gate)
            if not self.grad:
                return _BINARY[name](self.tensor(a_value), b_value)
            second_wins = self.tensor(a_value - b_value) >= 0  # Lepton: step(a - b)
            if name == "min":
                return self.masked(second_wins, b, a, gate)
            return self.masked(second_wins, a, b, gate)
        if name == "periodicdistance":
            args = [self.tensor(self(child, gate)) for child in node.children]
            return _periodic_distance(args, self.box)
        if name in _UNARY:
            return _UNARY[name](self.tensor(self(node.children[0], gate)))
        return _BINARY[name](self(node.children[0], gate), self(node.children[1], gate))

    def masked(self, mask: torch.Tensor, if_true: _Node, if_false: _Node, gate):
        """``where(mask, if_true, if_false)`` with each branch's inputs gated by where it is taken."""
        if self.grad:
            true_gate = mask if gate is None else gate & mask
            false_gate = ~mask if gate is None else gate & ~mask
        else:
            true_gate = false_gate = None
        return torch.where(mask, self.tensor(self(if_true, true_gate)), self.tensor(self(if_false, false_gate)))


class CompiledExpression(torch.nn.Module):
    """A compiled Lepton expression: ``forward(values) -> tensor`` with broadcasting.

    Attributes: ``text`` (the source), ``variables`` (the free names ``forward`` needs, after
    definitions are substituted and the expression is optimised), ``function_names`` (the
    custom functions it calls; their modules are submodules, so ``.to()`` moves them),
    ``operations`` (the built-in operators and functions it uses: ``add``, ``sub``, ``mul``,
    ``div``, ``pow``, ``neg`` and the function names).
    """

    def __init__(self, text: str, root: _Node, functions: Mapping[str, torch.nn.Module]):
        super().__init__()
        self.text = text
        self._root = root
        variables, called, operations = set(), set(), set()
        stack, seen = [root], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.kind == _VAR:
                variables.add(node.name)
            elif node.kind == _CALL:
                called.add(node.name)
            elif node.kind == _OP:
                operations.add(node.name)
            stack.extend(node.children)
        self.variables: frozenset[str] = frozenset(variables)
        self.function_names: frozenset[str] = frozenset(called)
        self.operations: frozenset[str] = frozenset(operations)
        self._module_keys = {name: f"f{i}" for i, name in enumerate(sorted(called))}
        self.functions = torch.nn.ModuleDict({self._module_keys[name]: functions[name] for name in sorted(called)})

    @property
    def constant(self) -> float | None:
        """The value if the whole expression folded to a constant, else None."""
        return self._root.value if self._root.kind == _CONST else None

    def uses(self, name: str) -> bool:
        """Whether the optimised expression depends on the variable ``name``."""
        return name in self.variables

    def forward(self, values: Mapping[str, torch.Tensor | float], box: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate with ``values`` (name -> tensor or float; broadcast together).

        ``box``: periodic box vectors ``[3, 3]`` for ``periodicdistance`` (None: no wrapping).
        The result has the broadcast shape of the variables used (0-d if none) and their
        promoted floating dtype (torch's default dtype when every value is a float).
        """
        modules = {name: self.functions[key] for name, key in self._module_keys.items()}
        evaluation = _Evaluation(values, self.variables, self.text, modules, box)
        return evaluation.tensor(evaluation(self._root))

    def extra_repr(self) -> str:
        return f"{self.text!r}"


def compile_expression(text: str, functions: Mapping[str, torch.nn.Module] | None = None) -> CompiledExpression:
    """Parse an OpenMM (Lepton) expression and compile it into a `CompiledExpression`.

    ``functions``: custom functions by name (OpenMM's tabulated functions as built by
    `boltzgen.energy.torch_forces.tabulated.tabulated_functions_of`); each is a module called
    with its arguments as tensors. Raises `ExpressionError` (an `UnsupportedForceError` and a
    ``ValueError``) naming the expression and the position of the problem if it does not parse.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected an expression string, got {type(text).__name__}")
    functions = dict(functions or {})
    root = _optimize(_parse(text, functions))
    return CompiledExpression(text, root, functions)
