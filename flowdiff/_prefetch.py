"""A cache prefetch hint for compiled loops (``llvm.prefetch``), which numba does not offer.

The ingest loop of :mod:`flowdiff.aggregate` spends most of its time waiting for memory: every frame
reads one slot of the hash index and then the row that slot names, both at random places. Asking for
those cache lines a few dozen frames ahead lets the loads of many frames overlap instead of running one
after the other (measured on the 2-core box: 340 -> 160 ns per frame on the busy span-port capture).

A prefetch is only a hint: it never faults, whatever the address, and it changes no value, so a hint
for a slot that is overwritten before it is used costs a wasted load and nothing else. That is also
why the plain Python functions below do nothing: kernels run interpreted (:mod:`flowdiff._jit`, tiny
inputs, numba never imported) call them as they are. When the process goes compiled, ``_jit`` runs
:func:`_register`, which gives them their compiled implementation (``numba.extending.overload`` of
an ``intrinsic``); it imports nothing numba has not loaded already.
"""

from __future__ import annotations

from typing import Any

from flowdiff._jit import on_compile

__all__ = ["prefetch1", "prefetch2"]


def prefetch1(arr: Any, i: int) -> None:
    """Hint that ``arr[i]`` (1-d array, integer index) is about to be read."""


def prefetch2(arr: Any, i: int, j: int) -> None:
    """Hint that ``arr[i, j]`` (2-d array, integer indices) is about to be read."""


def _register() -> None:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])

    def emit(context: Any, builder: Any, aryty: Any, ary_value: Any, indices: list[Any]) -> None:
        ary = context.make_array(aryty)(context, builder, ary_value)
        ptr = cgutils.get_item_pointer2(
            context,
            builder,
            data=ary.data,
            shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides),
            layout=aryty.layout,
            inds=indices,
            wraparound=False,
            boundscheck=False,
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read (0), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])

    @intrinsic
    def _hint1(typingctx: Any, arr: Any, i: Any) -> Any:
        if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(i, types.Integer):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            emit(context, builder, signature.args[0], args[0], [args[1]])
            return context.get_dummy_value()

        return types.void(arr, i), codegen

    @intrinsic
    def _hint2(typingctx: Any, arr: Any, i: Any, j: Any) -> Any:
        if (
            not isinstance(arr, types.Array)
            or arr.ndim != 2
            or not isinstance(i, types.Integer)
            or not isinstance(j, types.Integer)
        ):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            emit(context, builder, signature.args[0], args[0], [args[1], args[2]])
            return context.get_dummy_value()

        return types.void(arr, i, j), codegen

    # the overloads' parameters carry no annotations: numba compares them with the implementation's
    @overload(prefetch1)
    def _prefetch1(arr, i):  # type: ignore[no-untyped-def]
        return lambda arr, i: _hint1(arr, i)

    @overload(prefetch2)
    def _prefetch2(arr, i, j):  # type: ignore[no-untyped-def]
        return lambda arr, i, j: _hint2(arr, i, j)


on_compile(_register)
