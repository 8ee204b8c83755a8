"""Which option keys a class reads, found in its source code (the classes are the authority, not a list).

``class_option_reads(cls)`` parses the source of every class in ``cls``'s method resolution order (basicsr's,
ours, or a user's plug-in) and follows how each method reads its options:

* the roots are ``self.opt`` and a method argument named ``opt`` (``__init__(self, opt)`` of basicsr's models
  and datasets);
* a name assigned from a read follows it: ``train_opt = self.opt['train']`` makes ``train_opt.get('k')`` a
  read of ``train.k``; ``val = self.opt.get('val') or {}`` and ``dict(...)`` / ``deepcopy(...)`` copies too;
* a read is ``x['k']`` (subscript: fails when the key is absent), ``x.get('k')`` / ``x.pop`` /
  ``x.setdefault`` / ``'k' in x`` (guarded: the key may be absent), or a helper call ``f(x, 'k', ...)``.

The result maps a block (a tuple of keys from the root: ``()`` is the whole ``opt`` a class receives,
``('train',)`` its ``train`` block) to the keys read there, and which of them are read unguarded in each
method. A class whose source cannot be read raises ``OptionError`` naming it: an unreadable class would
otherwise make every key of its blocks look unknown (or, worse, accepted).
"""
from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sr_arch.errors import OptionError

Block = tuple[str, ...]

#: packages whose classes never read option files (their sources need not be inspected)
NO_OPTION_PACKAGES = frozenset({'builtins', 'torch', 'typing', 'abc', 'collections', 'contextlib'})
#: method arguments that hold the option mapping the class receives
ROOT_ARGUMENTS = frozenset({'opt'})
_GUARDED_METHODS = frozenset({'get', 'pop', 'setdefault'})
_COPIES = frozenset({'dict', 'deepcopy', 'copy'})


@dataclass
class OptionReads:
    """Keys read per block: every read (``keys``), and per method the keys read by subscript (``subscripted``)."""

    keys: dict[Block, set[str]] = field(default_factory=lambda: defaultdict(set))
    guarded: dict[Block, set[str]] = field(default_factory=lambda: defaultdict(set))
    subscripted: dict[str, dict[Block, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))

    def read(self, block: Block = ()) -> frozenset[str]:
        """Every key read in ``block``."""
        return frozenset(self.keys.get(block, ()))

    def required(self, method: str, block: Block = ()) -> frozenset[str]:
        """Keys ``method`` reads by subscript in ``block`` and that no method of the class tests for first."""
        return frozenset(self.subscripted.get(method, {}).get(block, set()) - self.guarded.get(block, set()))

    def merge(self, other: 'OptionReads') -> None:
        for block, keys in other.keys.items():
            self.keys[block] |= keys
        for block, keys in other.guarded.items():
            self.guarded[block] |= keys
        for method, blocks in other.subscripted.items():
            for block, keys in blocks.items():
                self.subscripted[method][block] |= keys


def _constant_key(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _MethodReader(ast.NodeVisitor):
    """Records the option reads of one method into ``reads`` (aliases follow assignments in source order)."""

    def __init__(self, method: ast.FunctionDef | ast.AsyncFunctionDef, reads: OptionReads) -> None:
        self.method = method.name
        self.reads = reads
        arguments = method.args.posonlyargs + method.args.args + method.args.kwonlyargs
        self.aliases: dict[str, Block] = {a.arg: () for a in arguments if a.arg in ROOT_ARGUMENTS}

    def block_of(self, node: ast.AST) -> Block | None:
        """The block an expression evaluates to, or None when it is not (a part of) the options."""
        if isinstance(node, ast.Attribute) and node.attr == 'opt' and isinstance(node.value, ast.Name) \
                and node.value.id == 'self':
            return ()
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Subscript):
            parent, key = self.block_of(node.value), _constant_key(node.slice)
            return parent + (key,) if parent is not None and key is not None else None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _GUARDED_METHODS and node.args:
                parent, key = self.block_of(func.value), _constant_key(node.args[0])
                return parent + (key,) if parent is not None and key is not None else None
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in _COPIES and len(node.args) == 1:
                return self.block_of(node.args[0])
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            return self.block_of(node.values[0])
        return None

    def record(self, block: Block, key: str, guarded: bool) -> None:
        self.reads.keys[block].add(key)
        if guarded:
            self.reads.guarded[block].add(key)
        else:
            self.reads.subscripted[self.method][block].add(key)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        block = self.block_of(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if block is None:
                    self.aliases.pop(target.id, None)
                else:
                    self.aliases[target.id] = block

    def visit_Subscript(self, node: ast.Subscript) -> None:
        block, key = self.block_of(node.value), _constant_key(node.slice)
        if block is not None and key is not None:
            self.record(block, key, guarded=False)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _GUARDED_METHODS and node.args:
            block, key = self.block_of(func.value), _constant_key(node.args[0])
            if block is not None and key is not None:
                self.record(block, key, guarded=True)
        elif len(node.args) >= 2:  # helper(opt, 'key', ...)
            block, key = self.block_of(node.args[0]), _constant_key(node.args[1])
            if block is not None and key is not None:
                self.record(block, key, guarded=True)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        key = _constant_key(node.left)
        if key is not None and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            block = self.block_of(node.comparators[0])
            if block is not None:
                self.record(block, key, guarded=True)
        self.generic_visit(node)


def inspected_classes(cls: type) -> list[type]:
    """The classes of ``cls``'s MRO whose sources may read options (all but Python's and torch's)."""
    return [klass for klass in inspect.getmro(cls) if klass.__module__.split('.')[0] not in NO_OPTION_PACKAGES]


def class_source(klass: type, what: str) -> str:
    """The source of ``klass``; ``OptionError`` naming it (and ``what`` it is) when it cannot be read."""
    try:
        return textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError) as err:
        raise OptionError(f'cannot check the option keys of {what} {klass.__module__}.{klass.__qualname__}: its '
                          f'source code is not readable ({err}); the keys a class reads are taken from its '
                          'source') from err


@functools.lru_cache(maxsize=None)
def own_option_reads(klass: type, what: str) -> OptionReads:
    """The reads of the methods defined in ``klass`` itself (not its bases)."""
    reads = OptionReads()
    tree = ast.parse(class_source(klass, what))
    class_node = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    for node in class_node.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _MethodReader(node, reads).visit(node)
    return reads


@functools.lru_cache(maxsize=None)
def class_option_reads(cls: type, what: str = 'class') -> OptionReads:
    """The reads of ``cls`` and every base that may read options (``what``: 'model', 'dataset'... for errors)."""
    reads = OptionReads()
    for klass in inspected_classes(cls):
        reads.merge(own_option_reads(klass, what))
    return reads


def registered_class(registry: Any, name: Any) -> type | None:
    """The class ``name`` in a basicsr registry (also under basicsr's ``<name>_basicsr``), or None."""
    if not isinstance(name, str):
        return None
    return registry._obj_map.get(name) or registry._obj_map.get(f'{name}_basicsr')
