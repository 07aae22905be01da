"""Compile targets: the one place that turns a target name into TVM target dicts.

Names: ``llvm`` (this CPU; ``llvm:MCPU`` picks another x86 CPU), ``cuda:sm_XX`` (host code
for x86-64), ``aarch64`` (a 64-bit Arm board's CPU) and ``cuda:sm_XX@aarch64`` (a
Jetson's GPU with Arm host code). Cross targets need Debian's ``g++-aarch64-linux-gnu``.
"""
from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import TrackerInputError

CROSS_CC = {"aarch64": "aarch64-linux-gnu-g++"}
CROSS_PACKAGE = {"aarch64": "g++-aarch64-linux-gnu"}  # the Debian / Ubuntu package of CROSS_CC
AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
JETSON_ARCHS = ("sm_72", "sm_87")
DATACENTER_ARCHS = ("sm_80", "sm_90")
# Per-block limits shared by every architecture from sm_70 on (without opting in to more
# shared memory), as TVM's own Jetson and datacenter target tags state them. MetaSchedule's
# GPU rules need them and a GPU-less build machine cannot ask a device for them.
CUDA_LIMITS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
               "registers_per_block": 65536}


@dataclass(frozen=True)
class CompileTarget:
    name: str       # canonical name, also the artifact folder and tuning-database folder
    target: dict    # TVM target dict (with "host" where it differs from the default)
    device: str     # "cpu" or "cuda": where the artifact runs
    cross: str | None = None  # "aarch64" when compiled for another machine

    def resolved(self) -> dict:
        """The target dict with ``mcpu: native`` replaced by this machine's CPU name (for
        the host part too). LLVM 22 rejects "native" and falls back to generic x86-64 (no
        AVX) with only a log line: every llvm build before this fix ran without SIMD."""
        from tvm.target import codegen

        def fix(t):
            t = dict(t)
            if t.get("mcpu") == "native":
                t["mcpu"] = codegen.llvm_get_system_cpu()
            if isinstance(t.get("host"), dict):
                t["host"] = fix(t["host"])
            return t

        return fix(self.target)

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.resolved())


TVM_TARGETS = "llvm, llvm:MCPU, aarch64, cuda:sm_XX or cuda:sm_XX@aarch64"


def parse(name: str, mcpu: str | None = None, also: str = "") -> CompileTarget:
    """``llvm``, ``llvm:znver3``, ``aarch64``, ``cuda:sm_87``, ``cuda:sm_87@aarch64``
    (``also``: the caller's other names, for the message naming the valid ones)."""
    name = name.strip()
    if name == "llvm" or name.startswith("llvm:"):
        cpu = name.split(":", 1)[1].strip() if ":" in name else (mcpu or "native")
        _check_cpu(cpu)
        canon = "llvm" if cpu == "native" else f"llvm-{cpu}"
        return CompileTarget(canon, {"kind": "llvm", "mcpu": cpu}, "cpu")
    if name in ("aarch64", "llvm-aarch64"):
        return CompileTarget("aarch64", dict(AARCH64_HOST), "cpu", cross="aarch64")
    if name.startswith("cuda"):
        spec, _, host = name.partition("@")
        arch = spec.split(":", 1)[1] if ":" in spec else "sm_80"
        if not arch.startswith("sm_") or not arch[3:].isdigit() or not 50 <= int(arch[3:]) < 200:
            raise TrackerInputError(f"bad CUDA architecture {arch!r}; use sm_ and the GPU's compute capability, "
                             f"e.g. cuda:sm_87 (Jetson Orin) or cuda:sm_90 (H100)")
        t = {"kind": "cuda", "arch": arch, **CUDA_LIMITS}
        if host == "aarch64":
            t["host"] = dict(AARCH64_HOST)
            return CompileTarget(f"cuda-{arch}-aarch64", t, "cuda", cross="aarch64")
        if host:
            raise TrackerInputError(f"unknown host {host!r} in {name!r}; only @aarch64 is supported")
        t["host"] = {"kind": "llvm"}
        return CompileTarget(f"cuda-{arch}", t, "cuda")
    raise TrackerInputError(f"unknown target {name!r}; use {also}{TVM_TARGETS}")


def parse_list(text: str, mcpu: str | None = None) -> list:
    """TVM targets of ``--targets``; ``onnx`` names the ONNX set, which is always built (so
    ``--targets onnx`` builds it alone, for ONNX Runtime)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise TrackerInputError(f"no target in {text!r}; name at least one, e.g. onnx, llvm or cuda:sm_87")
    return [parse(t, mcpu, also="onnx (the ONNX set alone), ") for t in names if t != "onnx"]


def _check_cpu(cpu: str) -> None:
    """A CPU name LLVM knows: LLVM ignores an unknown one with a log line and builds for the
    generic architecture, without SIMD."""
    if not cpu:
        raise TrackerInputError("llvm: needs a CPU name after the colon, e.g. llvm:znver3 (or plain llvm for this CPU)")
    if cpu == "native":
        return
    try:
        from tvm.target import codegen
    except ImportError:  # checked again where TVM compiles
        return
    triple = codegen.llvm_get_system_triple()  # llvm:MCPU compiles for this machine's architecture
    if not codegen.llvm_is_valid_cpu(cpu, triple):
        raise TrackerInputError(f"LLVM knows no CPU {cpu!r} for {triple}; use a name such as znver4, skylake-avx512 or "
                         f"alderlake, or plain llvm for this CPU")


def check_toolchain(target: CompileTarget) -> None:
    """A cross target's compiler is on PATH (checked before minutes of export: without it
    the link of the first library fails with a bare "No such file or directory")."""
    import shutil

    if target.cross and shutil.which(CROSS_CC[target.cross]) is None:
        raise TrackerInputError(f"target {target.name} links with {CROSS_CC[target.cross]}, which is not on PATH; install it "
                         f"(Debian/Ubuntu: sudo apt-get install {CROSS_PACKAGE[target.cross]}) or leave "
                         f"{target.name} out of --targets")
