"""A cache prefetch hint for compiled loops (``llvm.prefetch``), which numba does not offer.

The ingest loop of :mod:`flowdiff.aggregate` spends most of its time waiting for memory: every frame
reads one slot of the hash index and then the row that slot names, both at random places. Asking for
those cache lines a few dozen frames ahead lets the loads of many frames overlap instead of running one
after the other (measured on the 2-core box: 340 -> 160 ns per frame on the busy span-port capture).

A prefetch is only a hint: it never faults, whatever the address, and it changes no value, so a hint
for a slot that is overwritten before it is used costs a wasted load and nothing else. Everything here
is imported with numba itself (``numba.extending``, ``numba.core.cgutils``, ``llvmlite.ir``): no
start-up cost of its own.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch1", "prefetch2"]

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_PREFETCH = ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32])


def _emit(context, builder, aryty, ary_value, indices) -> None:
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
    fn = cgutils.get_or_insert_function(builder.module, _PREFETCH, "llvm.prefetch.p0")
    # read (0), high temporal locality (3), data cache (1)
    builder.call(fn, [builder.bitcast(ptr, _I8P), _I32(0), _I32(3), _I32(1)])


@intrinsic
def prefetch1(typingctx, arr, i):
    """Hint that ``arr[i]`` (1-d array, integer index) is about to be read."""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(i, types.Integer):
        return None
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        _emit(context, builder, signature.args[0], args[0], [args[1]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch2(typingctx, arr, i, j):
    """Hint that ``arr[i, j]`` (2-d array, integer indices) is about to be read."""
    if (
        not isinstance(arr, types.Array)
        or arr.ndim != 2
        or not isinstance(i, types.Integer)
        or not isinstance(j, types.Integer)
    ):
        return None
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        _emit(context, builder, signature.args[0], args[0], [args[1], args[2]])
        return context.get_dummy_value()

    return sig, codegen
