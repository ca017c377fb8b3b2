"""lowbit's default CPU schedules: rules, like TVM's dlight for GPUs, applied to every TIR function.

TVM 0.27 leaves CPU kernels as naive single-threaded loops. These rules, tried in order per function:

- ``Contraction``: a reduction block whose body is ``C[...] += A[...] * B[...]`` (dense, batched matmul,
  conv2d). The output's innermost axis is vectorized (it is contiguous in C and in the operand it indexes),
  a second spatial axis that the vector operand does not index is unrolled into a register tile (each of its
  values reuses the vector load), the reduction runs inside the tile, the accumulator tile lives in a local
  buffer, and the outer spatial loops are fused and run in parallel.
- ``Elementwise``: every other block: spatial loops fused, the outer part parallel, the inner part
  vectorized when the extent allows; reductions keep their reduction loops serial inside.
"""
from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx
# In TVM 0.27 the TIR expression classes live in tvm.ir (tirx.BufferLoad etc. are builder functions).
from tvm.ir.expr import TensorLoad as BufferLoad, Var
from tvm.ir.prim.expr import Add, Cast, Mul
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

MIN_PARALLEL = 1 << 14  # elements: smaller kernels stay serial (thread start-up costs more than they do)


def _vector_bytes(target) -> int:
    """64 bytes (AVX-512) on targets that have it, else 32 (AVX2); ``target`` is lowbit's ``Target``."""
    return 64 if target.has("avx512f") else 32


class LowbitRule(CPUScheduleRule):
    """A schedule rule that knows lowbit's ``Target`` and ``CodegenConfig`` and records why it declined:
    ``log`` collects one line per decline (``lowbit compile --debug-schedules`` prints them)."""

    def __init__(self, target, config, log: list | None = None):
        self.lb_target, self.config = target, config
        self.log = log if log is not None else []

    def declined(self, what: str, err) -> None:
        msg = str(err).strip().splitlines()
        self.log.append(f"{type(self).__name__}: {what}: {msg[-1] if msg else type(err).__name__}")

    def knob(self, sch, block, name: str):
        """Knob ``name`` for the kernel a block belongs to (its ``lowbit.kernel`` annotation), else the model's."""
        kernel = sch.get(block).annotations.get("lowbit.kernel")
        return self.config.knob(name, str(kernel) if kernel is not None else None)


def _extent(sch, loop) -> int | None:
    e = sch.get(loop).extent
    return int(e) if isinstance(e, tirx.IntImm) else None


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _lanes(dtype: str, vbytes: int) -> int:
    """Vector lanes of ``dtype`` ("float32", "int8", "bool"...) in ``vbytes`` bytes."""
    bits = int("".join(c for c in dtype if c.isdigit()) or 8)
    return max(1, vbytes * 8 // max(bits, 8))


def _region_buffer(region):
    """The buffer of a block's read/write region (TVM 0.27 names it ``source``)."""
    return getattr(region, "buffer", None) or region.source


def _schedule_spatial(sch, block, kinds, vbytes: int, min_parallel: int = MIN_PARALLEL) -> None:
    """Fuse the spatial loops; parallel outside, vectorized inside (when it divides); reductions serial."""
    loops = sch.get_loops(block)
    s = [lp for lp, k in zip(loops, kinds) if k == "S"]
    r = [lp for lp, k in zip(loops, kinds) if k != "S"]
    if not s:
        return
    blk = sch.get(block)
    buf = _region_buffer(blk.writes[0])
    lanes = _lanes(str(buf.dtype), vbytes)
    # TVM 0.27 cannot vectorize bool buffers (stored as int8, it emits mismatched vector stores): threads only
    vectorizable = all(str(_region_buffer(x).dtype) != "bool" for x in list(blk.reads) + list(blk.writes))
    if r and vectorizable and _reduces_outside_vector(sch, block, s[-1], lanes):
        # e.g. pooling or a spatial mean in the channel-blocked layout: the innermost spatial axis is
        # contiguous in the output and the input, so the reduction runs over whole vectors
        vo, vi = sch.split(s[-1], [None, lanes])
        sch.reorder(*s[:-1], vo, *r, vi)
        sch.vectorize(vi)
        outer = sch.fuse(*s[:-1], vo) if s[:-1] else vo
        if (_extent(sch, outer) or 0) * lanes * _work(sch, r) >= min_parallel:
            sch.parallel(outer)
        sch.decompose_reduction(block, r[0])
        return
    if r:
        sch.reorder(*s, *r)
    exts = [_extent(sch, lp) or 0 for lp in s]
    inner_ext = exts[-1]
    # vectors must not straddle rows: the vector width divides the trailing run of the flattened index
    trailing = 1
    for e in reversed(exts):
        trailing *= e
        if trailing >= lanes or not e:
            break
    if not r and vectorizable and len(s) > 1 and inner_ext >= 8 and inner_ext % lanes and all(exts):
        # lanes would straddle rows (56- or 28-wide u8 rows, 64 lanes): each lane's per-dimension index differs, and
        # TVM loads and stores them one by one. Vectors over a row (or a divisor of it), rows in parallel.
        row = max((d for d in (64, 32, 16, 8) if d <= lanes and inner_ext % d == 0), default=0)
        row = row or (inner_ext if inner_ext <= lanes else 0)
        if row:
            vo, vi = sch.split(s[-1], [None, row])
            outer = sch.fuse(*s[:-1], vo)
            sch.vectorize(vi)
            if (_extent(sch, outer) or 0) * row >= min_parallel:
                sch.parallel(outer)
            return
    width = max((d for d in (64, 32, 16, 8, 4) if d <= lanes and trailing and trailing % d == 0), default=0)
    if not r and vectorizable and trailing % lanes and width >= 4 and all(exts):
        # e.g. [.., 58, 4] u8 blocks (232 per row: 8-wide vectors) or a 130-wide f32 row (no power of two)
        fused = sch.fuse(*s) if len(s) > 1 else s[0]
        outer, inner = sch.split(fused, [None, width])
        sch.vectorize(inner)
        if _extent(sch, outer) * width >= min_parallel:
            sch.parallel(outer)
        return
    if not r and vectorizable and inner_ext % lanes and len(s) > 1 and inner_ext >= lanes:
        # rows that are not a whole number of vectors (a padded 130-wide image): vectors over the flattened
        # index would straddle rows and compute every lane's address apart; run rows in parallel instead
        outer = sch.fuse(*s[:-1]) if len(s) > 2 else s[0]
        if (_extent(sch, outer) or 0) * inner_ext >= min_parallel:
            sch.parallel(outer)
        return
    fused = sch.fuse(*s) if len(s) > 1 else s[0]
    n = _extent(sch, fused)
    if n is None:
        return
    if not r and vectorizable and n % lanes == 0 and n >= lanes:
        outer, inner = sch.split(fused, [None, lanes])
        sch.vectorize(inner)
        if n >= min_parallel:
            sch.parallel(outer)
    elif n * _work(sch, r) >= min_parallel:
        sch.parallel(fused)


def _work(sch, loops) -> int:
    """Iterations of ``loops`` (a loop of unknown extent counts as 16)."""
    n = 1
    for lp in loops:
        n *= _extent(sch, lp) or 16
    return n


def _reduces_outside_vector(sch, block, loop, lanes: int) -> bool:
    """Whether a reduction block's innermost spatial ``loop`` can be a vector: a multiple of ``lanes`` long,
    and its iterator the bare last index of the output and of every input (and in no other index)."""
    blk = sch.get(block)
    ext = _extent(sch, loop)
    loops = sch.get_loops(block)
    if not ext or ext % lanes or len(loops) != len(blk.iter_vars) or not isinstance(blk.body, tirx.BufferStore):
        return False
    iv = blk.iter_vars[[sch.get(lp).same_as(sch.get(loop)) for lp in loops].index(True)].var

    def last_is(indices):
        return bool(indices) and isinstance(indices[-1], Var) and indices[-1].same_as(iv) and \
            not any(iv in _vars_in(ix) for ix in indices[:-1])

    ok = last_is(blk.body.indices)

    def visit(load):
        nonlocal ok
        if not last_is(load.indices):
            ok = False

    tvm_ffi.structural_walk(blk.body.value, [(BufferLoad, visit)], order="post")
    return ok


def _open(rule, func, target):
    """A schedule of ``func`` and its normalized blocks, or None when the rule does not apply."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return None if infos is None else (sch, infos)


class Elementwise(LowbitRule):
    """Parallel + vectorized loops for every block of a function (the fallback)."""

    def apply(self, func, target, _tunable):
        opened = _open(self, func, target)
        if opened is None:
            return None
        sch, infos = opened
        vbytes = _vector_bytes(self.lb_target)
        infos = _inline_elementwise(sch, infos)
        for info in infos:
            try:
                _schedule_spatial(sch, info.block_rv, info.dom_kind(), vbytes,
                                  self.knob(sch, info.block_rv, "min_parallel"))
            except Exception as e:  # a block this rule cannot handle stays as it is (still correct)
                self.declined(f"block {sch.get(info.block_rv).name_hint} left unscheduled", e)
                continue
        return sch


def _elements(region) -> int | None:
    n = 1
    for r in region.region:
        if not isinstance(r.extent, tirx.IntImm):
            return None
        n *= int(r.extent)
    return n


def _inline_elementwise(sch, infos):
    """Inline each all-spatial block into its one consumer when the two write as many elements (a one-to-one
    elementwise chain, e.g. dequantize -> add -> relu -> quantize): one pass over memory instead of one per op,
    and no producer is recomputed (broadcasts and windows, whose consumers read an element many times, stay)."""
    left = list(infos)
    changed = True
    while changed:
        changed = False
        for info in left:
            if info.dom_kind().strip("S"):
                continue
            consumers = sch.get_consumers(info.block_rv)
            if len(consumers) != 1:
                continue
            n_p = _elements(sch.get(info.block_rv).writes[0])
            n_c = _elements(sch.get(consumers[0]).writes[0])
            if n_p is None or n_p != n_c:
                continue
            try:
                sch.compute_inline(info.block_rv)
            except Exception:
                continue
            left.remove(info)
            changed = True
            break
    return left


def _multiply_add_operands(stmt):
    """For a block body ``C[i] = C[i] + A[..] * B[..]`` (casts allowed), the two BufferLoads A and B."""
    if not isinstance(stmt, tirx.BufferStore):
        return None
    v = stmt.value
    if not isinstance(v, Add):
        return None
    loads = []

    def strip(e):
        while isinstance(e, Cast):
            e = e.value
        return e

    a, b = strip(v.a), strip(v.b)
    prod = b if isinstance(a, BufferLoad) and a.source.same_as(stmt.buffer) else a
    prod = strip(prod)
    if not isinstance(prod, Mul):
        return None
    for e in (strip(prod.a), strip(prod.b)):
        if not isinstance(e, BufferLoad):
            return None
        loads.append(e)
    return loads


def _is_plain_copy(blk) -> bool:
    """A block ``B[i..] = A[i..]`` whose indices are exactly its own iterators (no padding, no arithmetic)."""
    st = blk.body
    if not isinstance(st, tirx.BufferStore) or not isinstance(st.value, BufferLoad):
        return False
    return [str(i) for i in st.value.indices] == [str(i) for i in st.indices]


def _vars_in(expr) -> set:
    out = set()
    tvm_ffi.structural_walk(expr, [(Var, out.add)], order="post")
    return out


class Contraction(LowbitRule):
    """Register-tiled, vectorized, parallel schedule for the one multiply-accumulate block of a function; the
    register tile's rows (``tile``) and accumulator count (``accumulators``) are knobs, per kernel."""

    def __init__(self, target, config, log=None, inline_copies: bool = True, fuse_epilogue: bool = True,
                 local_padding: bool = True):
        super().__init__(target, config, log)
        self.local_padding = local_padding
        self.inline_copies, self.fuse_epilogue = inline_copies, fuse_epilogue

    def apply(self, func, target, _tunable):
        opened = _open(self, func, target)
        if opened is None:
            return None
        sch, infos = opened
        main = [i for i in infos if "R" in i.dom_kind() and _multiply_add_operands(sch.get(i.block_rv).body)]
        if len(main) != 1:
            return None
        main = main[0]
        vbytes = _vector_bytes(self.lb_target)
        self.tile = self.knob(sch, main.block_rv, "tile")
        self.accumulators = self.knob(sch, main.block_rv, "accumulators")
        self.vectors = self.knob(sch, main.block_rv, "vectors")
        self.loop_order = self.knob(sch, main.block_rv, "loop_order")
        self.reduce_unroll = self.knob(sch, main.block_rv, "reduce_unroll")
        min_parallel = self.knob(sch, main.block_rv, "min_parallel")
        others = [i for i in infos if i is not main]
        # producers that only copy (a pad_temp without padding, for 1x1 convs) are inlined into the loads
        for info in list(others):
            blk = sch.get(info.block_rv)
            if self.inline_copies and "R" not in info.dom_kind() and _is_plain_copy(blk):
                try:
                    sch.compute_inline(info.block_rv)
                    others.remove(info)
                except Exception:
                    pass
        produced = {str(_region_buffer(r).name) for r in sch.get(main.block_rv).writes}
        try:
            tile_loop, acc, par_loop, vec_var = self._tile(sch, main, vbytes)
        except Exception as e:
            self.declined(f"block {sch.get(main.block_rv).name_hint} not register-tiled", e)
            return None
        fused = []
        # injective epilogues (bias, activation, residual add), in program order, run per tile right after the
        # write-back: each one that reads the contraction's output, or an epilogue fused before it
        for info in list(others):
            blk = sch.get(info.block_rv)
            if not self.fuse_epilogue or "R" in info.dom_kind() or \
                    not any(str(_region_buffer(r).name) in produced for r in blk.reads):
                continue
            try:
                sch.reverse_compute_at(info.block_rv, tile_loop, preserve_unit_loops=True)
            except Exception as e:
                self.declined(f"epilogue {sch.get(info.block_rv).name_hint} not fused into the tile", e)
                continue
            loops = sch.get_loops(info.block_rv)
            if (_extent(sch, loops[-1]) or 1) > 1:
                sch.vectorize(loops[-1])
            produced |= {str(_region_buffer(r).name) for r in blk.writes}
            others.remove(info)
            fused.append(info.block_rv)
        # the epilogue reads the accumulator tile itself: no full-size intermediate between the fused blocks
        for b in [acc] + fused[:-1]:
            try:
                sch.compute_inline(b)
            except Exception:
                pass
        # a padding producer read along the vector (channel) axis, as a depthwise conv reads it, is computed per
        # outer tile into cache (recomputing only the window overlap) instead of as a whole padded copy in memory
        main_blk = sch.get(main.block_rv)
        loads = []
        tvm_ffi.structural_walk(main_blk.body.value, [(BufferLoad, loads.append)], order="post")
        red_vars = {iv.var for iv in main_blk.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
        for info in list(others):
            blk = sch.get(info.block_rv)
            if par_loop is None or "R" in info.dom_kind() or not self.local_padding:
                continue
            names = {str(_region_buffer(r).name) for r in blk.writes}
            reads = [ld for ld in loads if str(ld.source.name) in names]
            # a whole axis reduced (input channels: each tile would recompute every channel's padding) -> no
            if not reads or not all(any(vec_var in _vars_in(ix) for ix in ld.indices) for ld in reads) or any(
                    isinstance(ix, Var) and any(ix.same_as(v) for v in red_vars) for ld in reads for ix in ld.indices):
                continue
            try:
                sch.compute_at(info.block_rv, par_loop, preserve_unit_loops=True)
            except Exception as e:
                self.declined(f"producer {sch.get(info.block_rv).name_hint} not computed per tile", e)
                continue
            loops = sch.get_loops(info.block_rv)
            if (_extent(sch, loops[-1]) or 0) % _lanes(str(_region_buffer(blk.writes[0]).dtype), vbytes) == 0:
                sch.vectorize(loops[-1])
            others.remove(info)
        for info in others:
            try:
                _schedule_spatial(sch, info.block_rv, info.dom_kind(), vbytes, min_parallel)
            except Exception as e:
                self.declined(f"block {sch.get(info.block_rv).name_hint} left unscheduled", e)
                continue
        return sch

    @staticmethod
    def _vector_axis(sch, loops, iters, spatial, out_idx, operands, lanes):
        """The spatial iterator to vectorize: one that is the innermost index of an operand as a bare
        variable (unit stride) with a multiple of ``lanes`` iterations if there is one, else the output's
        innermost index. Returns (loop position, the operand it indexes contiguously or at all)."""
        def is_var(e, v):
            return isinstance(e, Var) and e.same_as(v)

        best = None
        svars = {iters[i].var for i in spatial}
        for i in spatial:
            v, ext = iters[i].var, _extent(sch, loops[i]) or 0
            for opnd in operands:
                if opnd.indices and is_var(opnd.indices[-1], v) and ext % lanes == 0:
                    # on a tie prefer the operand indexed by fewer spatial iterators (the weights of a
                    # depthwise conv): the other one then offers a register-tile axis that reuses its vector
                    used = set().union(*[_vars_in(ix) for ix in opnd.indices]) & svars
                    score = (1, ext, -len(used))
                    if best is None or score > best[0]:
                        best = (score, i, opnd)
        if best is not None:
            return best[1], best[2]
        last = _vars_in(out_idx[-1])
        vec = [i for i in spatial if iters[i].var in last]
        if len(vec) != 1:
            raise ValueError("no single vector axis")
        v = iters[vec[0]].var
        opnd = next((o for o in operands if any(v in _vars_in(ix) for ix in o.indices)), operands[0])
        return vec[0], opnd

    def _tile(self, sch, info, vbytes):
        block = info.block_rv
        blk = sch.get(block)
        kinds = info.dom_kind()
        loops = sch.get_loops(block)
        iters = blk.iter_vars
        if len(iters) != len(loops):
            raise ValueError("block iterators do not map one to one onto loops")
        a, b = _multiply_add_operands(blk.body)
        out_idx = blk.body.indices
        spatial = [i for i, k in enumerate(kinds) if k == "S"]
        reduce = [i for i, k in enumerate(kinds) if k == "R"]
        if not spatial or not reduce:
            raise ValueError("not a contraction")
        lanes = _lanes(str(blk.body.buffer.dtype), vbytes)
        vec, vec_operand = self._vector_axis(sch, loops, iters, spatial, out_idx, (a, b), lanes)
        bcast_operand = b if vec_operand is a else a
        vo_vars = set().union(*[_vars_in(ix) for ix in vec_operand.indices])
        cand = [i for i in spatial if i != vec and iters[i].var not in vo_vars and
                iters[i].var in set().union(*[_vars_in(ix) for ix in bcast_operand.indices])]
        ve = _extent(sch, loops[vec])

        def reg_key(i):  # the broadcast operand's contiguous axis first, then the longest, then the innermost
            binner = _vars_in(bcast_operand.indices[-1]) if bcast_operand.indices else set()
            return (iters[i].var in binner, _extent(sch, loops[i]) or 0, i)

        reg = max(cand, key=reg_key) if cand else None
        want = {vec: lanes if ve >= lanes else 1}
        if reg is not None and (_extent(sch, loops[reg]) or 0) >= self.tile:
            want[reg] = self.tile
        # pad only where no usable tile divides the extent: padding copies the operands on every call
        if any(_largest_divisor(_extent(sch, loops[i]) or 1, f) < min(f, 4) for i, f in want.items()):
            # e.g. ViT's 197 tokens, a prime: pad the iteration domain (zero-filled copies) so tiles divide
            sch.pad_einsum(block, [want.get(i, 1) for i in range(len(loops))])
            loops = sch.get_loops(block)
            ve = _extent(sch, loops[vec])
        vl = _largest_divisor(ve, lanes)
        if vl & (vl - 1):  # 10 lanes would be split by LLVM into 8 + 2: take the largest power of two that divides
            vl = max(d for d in (1, 2, 4, 8, 16, 32, 64) if d <= vl and ve % d == 0)
        # register tile: V vectors along the vector axis times R rows along ``reg``, V*R accumulators within
        # ``self.accumulators`` (32 vector registers hold them, the V weight vectors and one broadcast); per
        # reduction step V + R loads feed V*R multiply-adds. The most accumulators wins, then the wider V.
        options = [1, 2] if vl == lanes and ve % (2 * vl) == 0 and reg is not None else [1]
        if self.vectors in options:  # the knob forces one width where it can be had (0: the rule picks)
            options = [self.vectors]
        best = (0, 1, 1)
        for v in options:
            r = _largest_divisor(_extent(sch, loops[reg]), self.accumulators // v) if reg is not None else 1
            best = max(best, (v * r, v, r))
        _, nv, rl = best
        if rl == 1:  # no row axis to tile (a matrix-vector product): independent accumulators along the vector
            nv = _largest_divisor(ve // vl, min(8, self.accumulators))
        wide = nv > 1
        if wide:
            vo, vu, vi = sch.split(loops[vec], [None, nv, vl])
        else:
            vo, vi = sch.split(loops[vec], [None, vl])
        if reg is not None:
            ro, ri = sch.split(loops[reg], [None, rl])
        outer = [loops[i] for i in spatial if i not in (vec, reg)]
        red = [loops[i] for i in reduce]
        inner = ([ri] if reg is not None else []) + ([vu] if wide else []) + [vi]
        weight_like = not any(iters[i].var in vo_vars for i in spatial if i != vec)
        if self.loop_order:  # 1: the vector operand's block outermost, 2: the spatial tiles outermost
            weight_like = self.loop_order == 1
        if weight_like:  # e.g. packed conv weights, matmul B: keep one block of it hot across the spatial tiles
            order = [vo] + outer + ([ro] if reg is not None else [])
        else:
            order = outer + ([ro] if reg is not None else []) + [vo]
        sch.reorder(*order, *red, *inner)
        red_outer = red[0]
        u = _largest_divisor(_extent(sch, red[-1]) or 1, self.reduce_unroll)
        if u > 1:  # the innermost reduction loop unrolled by u (more independent loads in flight)
            r_o, r_i = sch.split(red[-1], [None, u])
            red_outer = r_o if len(red) == 1 else red[0]
            sch.unroll(r_i)
        tile_loop, par = order[-1], order[:-1]
        acc = sch.cache_write(block, 0, "local")
        # keep the vector axis innermost in the accumulator, or every multiply-add gathers and scatters
        pos = [k for k, ix in enumerate(out_idx) if iters[vec].var in _vars_in(ix)]
        if pos and pos[0] != len(out_idx) - 1:
            p, r = pos[0], len(out_idx)
            sch.transform_layout(block, ("write", 0),
                                 lambda *i: tuple(i[k] for k in range(r) if k != p) + (i[p],))
        sch.reverse_compute_at(acc, tile_loop, preserve_unit_loops=True)
        if reg is not None:
            sch.unroll(ri)
        if wide:
            sch.unroll(vu)
        if vl > 1:
            sch.vectorize(vi)  # before decompose_reduction: vectorize needs a complete reduction block
            sch.vectorize(sch.get_loops(acc)[-1])
        par_loop = None
        if par:
            par_loop = sch.fuse(*par) if len(par) > 1 else par[0]
            sch.parallel(par_loop)
        elif (_extent(sch, tile_loop) or 1) > 1:
            sch.parallel(tile_loop)
        sch.decompose_reduction(block, red_outer)  # last: the primitives above need the complete reduction
        tile_loop = sch.get_loops(acc)[len(sch.get_loops(acc)) - len(sch.get(acc).iter_vars) - 1]
        return tile_loop, acc, par_loop, iters[vec].var


_VNNI = "lowbit_dot_16x4_vnni"


def _vnni_intrin() -> str:
    """TVM's dot_16x4_vnni with the operand types LLVM 20 wants (<64 x i8>; TVM's own fails to build, TVM.md):
    C[16] (i32) += A[4] (u8, broadcast) . B[16, 4] (i8), one vpdpbusd."""
    from tvm.s_tir import TensorIntrin  # not tvm.s_tir.tensor_intrin: importing it takes over a minute
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(_VNNI)
        return _VNNI
    except Exception:
        pass

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"), a,
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(_VNNI, desc, impl)
    return _VNNI


class DotProduct4(LowbitRule):
    """The u8 x i8 conv laid out for VNNI (``ops_int.qconv2d_dot4``): an R x 16 tile of i32 accumulators over
    output columns x output channels, each 16-channel step one ``vpdpbusd`` (TVM's dot_16x4_vnni intrinsic)
    over 4 input channels; the requantization runs per tile from the accumulators. Only on VNNI CPUs."""


    def apply(self, func, target, _tunable):
        if not self.lb_target.has("avx512_vnni"):
            return None
        opened = _open(self, func, target)
        if opened is None:
            return None
        sch, infos = opened
        main = [i for i in infos if _role(sch, i.block_rv) == "dot4"]
        if len(main) != 1:
            return None
        block = main[0].block_rv
        try:
            loops = sch.get_loops(block)
            kinds = main[0].dom_kind()
            sp = [lp for lp, k in zip(loops, kinds) if k == "S"]
            rd = [lp for lp, k in zip(loops, kinds) if k == "R"]
            # [n, oco,] y, x, 16 | [c/4, ky, kx,] 4: normalization drops unit loops (a 3-channel stem's c/4)
            if len(sp) < 2 or not rd or _extent(sch, sp[-1]) != 16 or _extent(sch, rd[-1]) != 4:
                return None
            x, q, rk = sp[-2], sp[-1], rd[-1]
            r = _largest_divisor(_extent(sch, x), self.knob(sch, block, "vnni_rows"))
            xo, xi = sch.split(x, [None, r])
            sch.reorder(*sp[:-2], xo, *rd[:-1], xi, q, rk)
            # the intrinsic's accumulator is a "global" buffer; a per-tile one still ends up in registers
            acc = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
            outer = sch.fuse(*sp[:-2], xo)
            sch.parallel(outer)
            sch.decompose_reduction(block, rd[0] if len(rd) > 1 else xi)
            sch.tensorize(q, _vnni_intrin())
            sch.unroll(xi)
            for info in infos:
                if info is main[0]:
                    continue
                b = info.block_rv
                if _role(sch, b) == "epilogue":
                    sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
                else:
                    _schedule_spatial(sch, b, info.dom_kind(), _vector_bytes(self.lb_target),
                                      self.knob(sch, b, "min_parallel"))
            try:
                sch.compute_inline(acc)
            except Exception:
                pass  # the accumulator copy stays: still correct, and in registers per tile
        except Exception as e:
            self.declined("a dot4 conv not tensorized with vpdpbusd", e)
            return None
        return sch


def _role(sch, block) -> str | None:
    """A block's ``lowbit.role`` annotation (set where the kernel is written, e.g. ``ops_int.qconv2d_dot4``)."""
    role = sch.get(block).annotations.get("lowbit.role")
    return str(role) if role is not None else None


def default_rules(target, config, log: list | None = None):
    """lowbit's CPU rules for ``target`` with the knobs of ``config``, in the order they are tried."""
    return [DotProduct4(target, config, log), Contraction(target, config, log), Elementwise(target, config, log)]
