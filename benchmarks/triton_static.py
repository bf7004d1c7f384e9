"""Static analysis of Triton kernels for NVIDIA GPUs, with no GPU: record launches, compile them, read the SASS.

Three layers, each usable alone (nothing here knows about fastbert):

1. :class:`LaunchRecorder` — a context manager that replaces ``JITFunction.run`` so that ``kernel[grid](...)``
   records a :class:`Launch` instead of compiling and running. The signature, constexprs, specialization
   attributes and options are computed the way the JIT computes them, by the JIT's own code: the binder that
   ``create_function_from_signature`` builds (``specialize_impl`` on every argument: pointer dtypes, ints that
   are specialized or ``do_not_specialize``, divisibility by 16) and ``JITFunction._pack_args``, against the
   backend of a chosen ``GPUTarget`` instead of the active driver's. The arguments are the real tensors the
   launchers build (CPU tensors work: only dtype, data pointer alignment and integer values matter), so the
   compiled code is the one a GPU run would compile. ``torch.cuda.get_device_capability`` answers the target's
   capability inside the context. (Checked against the ``run`` / ``create_binder`` / ``_pack_args`` sources of
   Triton 3.6 and 3.9, which agree on these names.)
2. :func:`compile_launch` / :func:`analyze` — ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
   in-process (Triton ships ``ptxas``, ``cuobjdump`` and ``nvdisasm``), then from the cubin: registers and static
   shared memory (``cuobjdump -res-usage``), dynamic shared memory (``metadata.shared``), spill bytes (the widths
   of the ``STL`` / ``LDL`` instructions in the SASS, which is what ptxas counts as spill stores / loads; the
   ``ptxas -v`` line is kept as a cross-check whenever this process ran ptxas), theoretical occupancy from
   :data:`SM_LIMITS`, tensor-core instructions, and the main loop (see :func:`main_loop`).
3. The caller decides what to launch and how to report it (``benchmarks/static_report.py``).

Tensor-core SASS opcodes by target (what Triton 3.9 emits for bf16/fp16 ``tl.dot``): ``HMMA`` on sm_80, sm_86,
sm_89 and sm_120 (consumer Blackwell has no wgmma/tcgen05), ``HGMMA`` (wgmma) on sm_90, ``UTCHMMA`` (tcgen05.mma)
on sm_100; :data:`TENSOR_CORE_OPS` also lists the integer/fp8/other-kind variants.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import math
import os
import re
import subprocess
import tempfile
from typing import Any

# Per-SM limits used for theoretical occupancy. Values from the CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability" (https://docs.nvidia.com/cuda/cuda-c-programming-guide/#features-and-technical-specifications),
# as encoded in NVIDIA's CCCL ``cuda/__device/arch_traits.h``: 64K 32-bit registers per SM and at most 255 per thread
# on every listed target, 1 KB of shared memory reserved by the driver per block (cc >= 8.0). Allocation units are
# the CUDA occupancy calculator's: registers in units of 256 per warp, shared memory in units of 128 bytes.
# smem_sm: shared memory per SM (the maximum carve-out); smem_block: per-block opt-in maximum.
@dataclasses.dataclass(frozen=True)
class SmLimits:
    max_warps: int
    max_blocks: int
    smem_sm: int
    smem_block: int
    regs_sm: int = 64 * 1024
    reg_unit: int = 256
    smem_unit: int = 128
    smem_reserved: int = 1024


SM_LIMITS = {
    80: SmLimits(max_warps=64, max_blocks=32, smem_sm=164 * 1024, smem_block=163 * 1024),  # A100
    86: SmLimits(max_warps=48, max_blocks=16, smem_sm=100 * 1024, smem_block=99 * 1024),  # RTX 30xx, A10, A40
    89: SmLimits(max_warps=48, max_blocks=24, smem_sm=100 * 1024, smem_block=99 * 1024),  # L4, L40, RTX 40xx
    90: SmLimits(max_warps=64, max_blocks=32, smem_sm=228 * 1024, smem_block=227 * 1024),  # H100, H200
    100: SmLimits(max_warps=64, max_blocks=32, smem_sm=228 * 1024, smem_block=227 * 1024),  # B200, GB200
    120: SmLimits(max_warps=48, max_blocks=24, smem_sm=100 * 1024, smem_block=99 * 1024),  # RTX 50xx, RTX PRO 6000
}

# Tensor-core (matrix multiply-accumulate) SASS opcodes: warp-level MMA (Volta..Ada, consumer Blackwell),
# warpgroup GMMA (Hopper wgmma), and the tcgen05 UTC*MMA family (datacenter Blackwell).
TENSOR_CORE_OPS = re.compile(r"^(HMMA|IMMA|DMMA|BMMA|QMMA|OMMA|HGMMA|IGMMA|QGMMA|BGMMA|UTC[A-Z]*MMA)$")


# ----------------------------------------------------------------------------------------------------------------
# 1. recording launches
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Launch:
    """One kernel launch as the JIT would compile it for ``capability`` (a picklable description)."""

    module: str
    qualname: str
    capability: int
    signature: dict[str, str]  # argument name -> "*bf16", "i32", "fp32", "constexpr", ...
    constexprs: dict[tuple, Any]  # argument path -> value (constexpr parameters and JIT-specialized values)
    attrs: dict[tuple, list]  # argument path -> [["tt.divisibility", 16]] or []
    options: dict[str, Any]  # the backend's parsed options (num_warps, num_stages, arch, ...)
    arg_names: list[str]

    @property
    def name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def num_warps(self) -> int:
        return self.options["num_warps"]

    @property
    def num_stages(self) -> int:
        return self.options["num_stages"]

    def constexpr(self, name: str, default=None):
        """Value of a named constexpr parameter (or of an argument the JIT specialized to a constant)."""
        if name not in self.arg_names:
            return default
        return self.constexprs.get((self.arg_names.index(name),), default)

    def named_constexprs(self) -> dict[str, Any]:
        return {self.arg_names[k[0]]: v for k, v in self.constexprs.items() if len(k) == 1}

    def specialization(self) -> dict[str, Any]:
        """Readable specialization: pointer dtypes, divisible-by-16 arguments, unspecialized ints."""
        div16 = sorted(self.arg_names[k[0]] for k, v in self.attrs.items() if len(k) == 1 and ["tt.divisibility", 16] in v)
        return {
            "pointers": {n: t[1:] for n, t in self.signature.items() if isinstance(t, str) and t.startswith("*")},
            "scalars": {n: t for n, t in self.signature.items() if isinstance(t, str) and not t.startswith("*") and t != "constexpr"},
            "divisible_by_16": div16,
        }

    def signature_text(self) -> str:
        """The runtime arguments as the JIT typed them, ``name:type`` plus ``:D`` where divisible by 16."""
        div16 = set(self.specialization()["divisible_by_16"])
        return ", ".join(f"{n}:{t}{':D' if n in div16 else ''}" for n, t in self.signature.items() if t != "constexpr")

    def key(self) -> str:
        """Identity for de-duplication: two launches with equal keys compile to the same binary."""
        return repr((self.module, self.qualname, self.capability, sorted(self.signature.items()),
                     sorted(self.constexprs.items(), key=repr), sorted(self.attrs.items(), key=repr),
                     sorted(self.options.items(), key=repr)))


def _jit_run_kwargs(jit_fn, kwargs: dict, option_names) -> dict:
    """The option kwargs ``JITFunction.run`` adds before binding (debug and the compilation knobs it forwards)."""
    from triton import knobs

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", jit_fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if name in option_names and hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    return kwargs


class LaunchRecorder:
    """``with LaunchRecorder(90) as rec: <code that launches Triton kernels>`` -> ``rec.launches``.

    Kernels are recorded, never compiled or run: outputs of the recorded code are left as allocated (garbage).
    Only launches through ``JITFunction.run`` are seen (``kernel[grid](...)``, ``kernel.run(...)``); autotuned or
    heuristics-wrapped kernels reach it too, but an autotuner would only record its first config.
    """

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        self.capability = int(capability)
        self.target = GPUTarget("cuda", self.capability, 32)
        self.backend = make_backend(self.target)
        self.launches: list[Launch] = []
        self._binders: dict[int, Any] = {}
        self._saved: list[tuple[Any, str, Any]] = []

    def _binder(self, jit_fn):
        from triton.runtime.jit import create_function_from_signature

        binder = self._binders.get(id(jit_fn))
        if binder is None:
            binder = create_function_from_signature(jit_fn.signature, jit_fn.params, self.backend)
            self._binders[id(jit_fn)] = binder
        return binder

    def record(self, jit_fn, *args, grid, warmup, **kwargs):
        import triton.backends.nvidia.compiler as nv

        kwargs = _jit_run_kwargs(jit_fn, kwargs, nv.CUDAOptions.__dataclass_fields__)
        bound_args, specialization, options = self._binder(jit_fn)(*args, **kwargs)
        options, signature, constexprs, attrs = jit_fn._pack_args(self.backend, kwargs, bound_args, specialization,
                                                                  options)
        fn = jit_fn.fn
        self.launches.append(Launch(
            module=fn.__module__, qualname=fn.__qualname__, capability=self.capability, signature=dict(signature),
            constexprs=dict(constexprs), attrs=dict(attrs), options=dict(options.__dict__),
            arg_names=list(jit_fn.arg_names),
        ))
        return None

    def _patch(self, owner, name, value):
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> "LaunchRecorder":
        import torch
        from triton.runtime.jit import JITFunction

        recorder = self

        def run(jit_fn, *args, grid, warmup, **kwargs):
            return recorder.record(jit_fn, *args, grid=grid, warmup=warmup, **kwargs)

        self._patch(JITFunction, "run", run)
        self._patch(torch.cuda, "get_device_capability", lambda device=None: divmod(self.capability, 10))
        return self

    def __exit__(self, *exc) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)


# ----------------------------------------------------------------------------------------------------------------
# 2. compiling and analyzing
# ----------------------------------------------------------------------------------------------------------------
def _resolve(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def nvidia_tool(name: str) -> str:
    """Path of a CUDA binary Triton ships (cuobjdump, nvdisasm, ptxas), honouring TRITON_<NAME>_PATH."""
    from triton import knobs

    tool = getattr(knobs.nvidia, name.replace("-", "_"), None)
    if tool is not None:
        return tool.path
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_launch(launch: Launch):
    """``triton.compile`` the launch for its target; returns (CompiledKernel, ptxas -v log or None on a cache hit)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _resolve(launch.module, launch.qualname)
    src = ASTSource(fn, launch.signature, launch.constexprs, launch.attrs)
    log = io.StringIO()
    dump = hasattr(knobs.nvidia, "dump_ptxas_log")
    saved = knobs.nvidia.dump_ptxas_log if dump else None
    try:
        if dump:
            knobs.nvidia.dump_ptxas_log = True  # Triton prints the ptxas -v log when it runs ptxas (not on a cache hit)
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=GPUTarget("cuda", launch.capability, 32), options=dict(launch.options))
    finally:
        if dump:
            knobs.nvidia.dump_ptxas_log = saved
    return kernel, (log.getvalue() or None)


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")


@dataclasses.dataclass
class Instr:
    addr: int
    text: str  # without the guard predicate
    opcode: str  # full opcode with modifiers, e.g. "BRA.U"
    guarded: bool  # has a guard predicate other than @PT

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


def parse_sass(sass: str) -> list[Instr]:
    """Instructions of the (single) kernel function in ``cuobjdump -sass`` output, in address order."""
    out = []
    for line in sass.splitlines():
        m = _SASS_LINE.match(line)
        if not m:
            continue
        text = m.group(2).strip()
        guard = _PRED.match(text)
        guarded = bool(guard) and guard.group(0).strip() not in ("@PT", "@UPT")
        if guard:
            text = text[guard.end():]
        opcode = text.split(None, 1)[0] if text else ""
        out.append(Instr(int(m.group(1), 16), text, opcode, guarded))
    return out


_BRANCH_TARGET = re.compile(r"(0x[0-9a-f]+)\s*$")
_LOCAL_WIDTH = {"": 4, "U8": 1, "S8": 1, "U16": 2, "S16": 2, "32": 4, "64": 8, "128": 16}


def spill_bytes(instrs: list[Instr]) -> tuple[int, int]:
    """(store bytes, load bytes) of local-memory STL / LDL instructions: ptxas's "spill stores / loads"."""
    st = ld = 0
    for ins in instrs:
        if ins.base not in ("STL", "LDL"):
            continue
        mods = [m for m in ins.opcode.split(".")[1:] if m in _LOCAL_WIDTH]
        width = _LOCAL_WIDTH[mods[-1]] if mods else 4
        if ins.base == "STL":
            st += width
        else:
            ld += width
    return st, ld


@dataclasses.dataclass
class Loop:
    header: int  # address of the loop header
    instrs: int  # static instruction count of the natural loop (NOPs excluded)
    tensor_core: int  # tensor-core instructions inside
    blocks: frozenset  # basic-block indices (internal)


def find_loops(instrs: list[Instr]) -> list[Loop]:
    """Natural loops of the SASS control-flow graph (one per header; nested loops appear separately).

    Basic blocks split at branch targets and after BRA / EXIT / RET; a back edge is an edge u -> h where h dominates
    u. Counting blocks rather than an address range keeps out-of-line code that belongs to a loop (e.g. the mbarrier
    wait spins sm_100 places after EXIT and branches back from) and leaves out what does not.
    """
    if not instrs:
        return []
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    targets: dict[int, int] = {}
    leaders = {0}
    for i, ins in enumerate(instrs):
        if ins.base == "BRA":
            m = _BRANCH_TARGET.search(ins.text)
            if m and int(m.group(1), 16) in index:
                targets[i] = index[int(m.group(1), 16)]
                leaders.add(targets[i])
            leaders.add(i + 1)
        elif ins.base in ("EXIT", "RET", "BRX", "JMX", "JMP"):
            leaders.add(i + 1)
    starts = sorted(x for x in leaders if x < len(instrs))
    block_of = {}
    for b, s in enumerate(starts):
        end = starts[b + 1] if b + 1 < len(starts) else len(instrs)
        for i in range(s, end):
            block_of[i] = b
    ends = [(starts[b + 1] if b + 1 < len(starts) else len(instrs)) - 1 for b in range(len(starts))]

    succ: list[set[int]] = [set() for _ in starts]
    for b, last in enumerate(ends):
        ins = instrs[last]
        falls = True
        if ins.base == "BRA":
            if last in targets:
                succ[b].add(block_of[targets[last]])
            # unconditional: no guard and no predicate operand (e.g. "BRA 0x1f0", not "BRA.U !UP0, 0x1f0")
            operands = ins.text.split(None, 1)[1] if " " in ins.text else ""
            falls = ins.guarded or "," in operands
        elif ins.base in ("EXIT", "RET", "BRX", "JMX", "JMP"):
            falls = ins.guarded and ins.base == "EXIT"
        if falls and last + 1 < len(instrs):
            succ[b].add(block_of[last + 1])

    # reachable blocks, then iterative dominators
    n = len(starts)
    reach, stack = {0}, [0]
    while stack:
        for s in succ[stack.pop()]:
            if s not in reach:
                reach.add(s)
                stack.append(s)
    pred: list[set[int]] = [set() for _ in range(n)]
    for b in reach:
        for s in succ[b]:
            pred[s].add(b)
    dom = {b: set(reach) for b in reach}
    dom[0] = {0}
    order = sorted(reach)
    changed = True
    while changed:
        changed = False
        for b in order:
            if b == 0:
                continue
            ps = [dom[p] for p in pred[b] if p in reach]
            new = set.intersection(*ps) | {b} if ps else {b}
            if new != dom[b]:
                dom[b], changed = new, True

    bodies: dict[int, set[int]] = {}
    for u in reach:
        for h in succ[u]:
            if h in dom[u]:  # back edge u -> h
                body = bodies.setdefault(h, {h})
                work = [u]
                while work:
                    x = work.pop()
                    if x not in body:
                        body.add(x)
                        work.extend(pred[x])
    loops = []
    for h, body in bodies.items():
        members = [i for b in body for i in range(starts[b], ends[b] + 1)]
        loops.append(Loop(
            header=instrs[starts[h]].addr,
            instrs=sum(1 for i in members if instrs[i].base != "NOP"),
            tensor_core=sum(1 for i in members if TENSOR_CORE_OPS.match(instrs[i].base)),
            blocks=frozenset(body),
        ))
    return sorted(loops, key=lambda lp: lp.header)


def _innermost_mma_loops(loops: list[Loop]) -> list[Loop]:
    """Loops with the most tensor-core instructions that contain no other such loop (or every innermost loop when
    none has any: the row loops of LayerNorm / GELU backward)."""
    cands = [lp for lp in loops if lp.tensor_core] or list(loops)
    inner = [c for c in cands if not any(o is not c and o.blocks < c.blocks for o in cands)]
    most = max((c.tensor_core for c in inner), default=0)
    return [c for c in inner if c.tensor_core == most]


def main_loop(loops: list[Loop]) -> Loop | None:
    """The kernel's main loop: of the innermost loops with the most tensor-core instructions, the leanest one.

    Heuristic. Candidates are the loops with tensor-core instructions (for attention: the key-block loops of the
    forward and dQ kernels, the query-block loops of dK/dV), or every loop when none has any. Innermost: a candidate
    that contains no other candidate, so loops without MMAs (mbarrier wait spins inside the main loop) neither win
    nor disqualify. The attention kernels run their key (query) blocks in two kinds of sibling loops: the inner
    blocks, with no masking, and at most a few boundary blocks per program (span edges, window band, rows with holes)
    with masks: the steady state is the unmasked loop, the leanest sibling; :func:`boundary_loop` is the other.
    The static instruction count includes the software-pipelined prefetch of later iterations and rarely taken
    paths inside the loop; it is a code-size proxy for per-iteration issue work, not a dynamic count.
    """
    inner = _innermost_mma_loops(loops)
    return min(inner, key=lambda lp: lp.instrs) if inner else None


def boundary_loop(loops: list[Loop]) -> Loop | None:
    """The costliest sibling of :func:`main_loop` (a masked boundary-block loop), or None when there is only one."""
    inner = _innermost_mma_loops(loops)
    return max(inner, key=lambda lp: lp.instrs) if len(inner) > 1 else None


def occupancy(capability: int, regs: int, num_warps: int, smem_bytes: int) -> dict[str, Any]:
    """Theoretical occupancy (resident warps per SM) from registers, shared memory and the per-SM block/warp caps."""
    lim = SM_LIMITS.get(capability)
    if lim is None:
        return {"blocks": None, "warps": None, "occupancy": None, "limiter": "unknown target"}
    regs_per_warp = math.ceil(max(regs, 1) * 32 / lim.reg_unit) * lim.reg_unit
    by = {
        "warps": lim.max_warps // num_warps,
        "blocks": lim.max_blocks,
        "registers": (lim.regs_sm // regs_per_warp) // num_warps,
    }
    if smem_bytes > lim.smem_block:
        by["shared memory"] = 0
    elif smem_bytes:
        per_block = math.ceil((smem_bytes + lim.smem_reserved) / lim.smem_unit) * lim.smem_unit
        by["shared memory"] = lim.smem_sm // per_block
    limiter = min(by, key=lambda k: by[k])
    blocks = by[limiter]
    return {"blocks": blocks, "warps": blocks * num_warps, "occupancy": blocks * num_warps / lim.max_warps,
            "limiter": limiter}


_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def analyze(kernel, capability: int, ptxas_log: str | None = None) -> dict[str, Any]:
    """Resource usage, occupancy, tensor-core instructions and main loop of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        sass = subprocess.run([nvidia_tool("cuobjdump"), "-res-usage", "-sass", path], check=True,
                              capture_output=True, text=True).stdout
    m = _RES_USAGE.search(sass)
    if not m:
        raise RuntimeError(f"cannot parse cuobjdump -res-usage output:\n{sass[:2000]}")
    regs, stack, smem_static, _local = (int(g) for g in m.groups())
    instrs = parse_sass(sass)
    spill_st, spill_ld = spill_bytes(instrs)
    tc: dict[str, int] = {}
    for ins in instrs:
        if TENSOR_CORE_OPS.match(ins.base):
            tc[ins.base] = tc.get(ins.base, 0) + 1
    loops = find_loops(instrs)
    main = main_loop(loops)
    boundary = boundary_loop(loops)
    smem_dynamic = int(kernel.metadata.shared)
    num_warps = int(kernel.metadata.num_warps)
    out = {
        "registers": regs,
        "stack_bytes": stack,
        "spill_store_bytes": spill_st,
        "spill_load_bytes": spill_ld,
        "smem_static": smem_static,
        "smem_dynamic": smem_dynamic,
        **occupancy(capability, regs, num_warps, smem_static + smem_dynamic),
        "tensor_core": tc,
        "instructions": sum(1 for i in instrs if i.base != "NOP"),
        "loops": [{"header": hex(lp.header), "instrs": lp.instrs, "tensor_core": lp.tensor_core} for lp in loops],
        "main_loop_instrs": main.instrs if main else None,
        "main_loop_tensor_core": main.tensor_core if main else None,
        "main_loop_header": hex(main.header) if main else None,
        "boundary_loop_instrs": boundary.instrs if boundary else None,
    }
    if ptxas_log:
        s, r = _PTXAS_SPILL.search(ptxas_log), _PTXAS_REGS.search(ptxas_log)
        out["ptxas"] = {"registers": int(r.group(1)) if r else None,
                        "stack_frame": int(s.group(1)) if s else None,
                        "spill_stores": int(s.group(2)) if s else None,
                        "spill_loads": int(s.group(3)) if s else None}
    return out


def compile_and_analyze(launch: Launch) -> dict[str, Any]:
    """Compile one launch and analyze it; a compile error becomes {"error": ...} so one failure spoils no report."""
    try:
        kernel, log = compile_launch(launch)
        return analyze(kernel, launch.capability, log)
    except Exception as exc:  # noqa: BLE001 - reported per variant
        msg = str(exc).strip().splitlines()
        return {"error": f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]}


KERNEL_SOURCES = ("fastbert/ops/fused_attention.py", "fastbert/ops/fused_layer_norm.py", "fastbert/ops/fused_gelu.py",
                  "fastbert/ops/_common.py", "benchmarks/fa2_peer.py")


def kernel_sources_hash() -> str:
    """sha256 over the code of the files that decide what the report compiles (kernels, launch configs, the peer),
    without comments, docstrings and layout (their token stream): a report whose ``environment.kernel_sources``
    differs from this describes other code and must be regenerated (make static)."""
    import hashlib
    import tokenize

    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        with open(os.path.join(root, rel), "rb") as f:
            tokens = [t for t in tokenize.tokenize(f.readline) if t.type not in skip]
        digest.update(rel.encode() + b"\0")
        for i, tok in enumerate(tokens):
            statement_start = i == 0 or tokens[i - 1].type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
            is_docstring = (tok.type == tokenize.STRING and statement_start and i + 1 < len(tokens)
                            and tokens[i + 1].type == tokenize.NEWLINE)
            if not is_docstring:
                digest.update(tok.string.encode() + b"\1")
    return digest.hexdigest()
