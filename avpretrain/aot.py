"""Will it fit? Ahead-of-time compilation of the real sharded train step for a TPU topology, here.

``avpretrain aot --config=… --topology=v5e:16x16`` builds the topology's devices from libtpu's
description (no TPU needed: ``jax.experimental.topologies``), the config's mesh over them, the
train state and a global batch as shapes with their shardings, and compiles the same jitted step
the trainer runs (``step.make_train_step``). It reports per-device memory (arguments, outputs,
temporaries, generated code) against the chip's HBM, the step's FLOPs (XLA's count and the
model's analytic one), the collectives in the compiled program, and whether it fits, with what to
change when it does not.

libtpu (``jax[tpu]``'s runtime, ~700 MB) is looked for on ``sys.path`` and in ``AVP_LIBTPU_DIR``
(default ``<venv>/libtpu``, where ``make venv`` installs it with ``pip install --target``): kept
out of site-packages, because an installed libtpu makes every JAX process on a machine without a
TPU try to start one (seconds and a page of warnings).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import sys

# HBM per chip (GiB) by topology prefix; the device kind is printed beside it.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def libtpu_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("AVP_LIBTPU_DIR") or pathlib.Path(sys.prefix) / "libtpu")


def ensure_libtpu() -> None:
    """Makes ``import libtpu`` work (``AVP_LIBTPU_DIR``), or raises with how to install it."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None and (libtpu_dir() / "libtpu").is_dir():
        sys.path.insert(0, str(libtpu_dir()))
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"avpretrain aot needs libtpu (no TPU needed): `make venv` installs it into {libtpu_dir()}, "
                         f"or: pip install --target {libtpu_dir()} libtpu (the version jax[tpu] pins)")
    # libtpu looks for a TPU host's description and says so at length when there is none
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def parse_topology(topology: str) -> tuple[str, str, int]:
    """"v5e:16x16" → ("v5e", "16x16", 256 chips)."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", topology or "")
    if not m:
        raise ValueError(f"--topology={topology!r}: give TYPE:SHAPE with TYPE one of {sorted(HBM_GIB)}, e.g. "
                         "v5e:16x16, v5p:4x4x8, v4:2x2x4")
    chips = 1
    for d in m.group(2).split("x"):
        chips *= int(d)
    return m.group(1), m.group(2), chips


class DoesNotFit(Exception):
    """The TPU compiler's refusal: the program's buffers exceed the HBM (its own words)."""

    def __init__(self, message: str, mesh: dict, devices: int):
        super().__init__(message)
        self.mesh, self.devices = mesh, devices


@dataclasses.dataclass
class Report:
    topology: str
    devices: int
    device_kind: str
    mesh: dict
    hbm_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    xla_flops: float | None
    analytic_flops: float | None
    collectives: dict

    @property
    def total_bytes(self) -> int:
        """Live at once on one device: arguments + outputs not aliased to them (the donated state) +
        temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes


def count_collectives(hlo_text: str) -> dict:
    """How many of each collective op the compiled program holds (async start/done pairs count once)."""
    counts = {}
    for op in COLLECTIVES:
        n = len(re.findall(rf"\s{op}(?:-start)?\(", hlo_text))
        if n:
            counts[op] = n
    return counts


def compile_step(config, topology: str) -> Report:
    """The compiled train step of ``config`` on ``topology``: its memory, FLOPs and collectives."""
    kind, shape, _ = parse_topology(topology)
    ensure_libtpu()
    import jax
    from flax import nnx
    from jax.experimental import topologies

    from avpretrain import method as method_lib, sharding, step as step_lib

    # a program for devices this process cannot load: not one for the persistent compilation cache
    jax.config.update("jax_enable_compilation_cache", False)
    topo = topologies.get_topology_desc(platform="tpu", topology_name=f"{kind}:{shape}")
    devices = list(topo.devices)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    rules = config.sharding_rules
    if config.batch_size % sharding.data_parallel_size(mesh, rules):
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                         f"{sharding.data_parallel_size(mesh, rules)} data-parallel devices of {config.mesh} on {topology}")
    method = method_lib.of(config)

    def train_state():
        model = step_lib.create_model(config, nnx.Rngs(config.seed))
        return step_lib.TrainState(model, step_lib.make_optimizer(config, model))

    def init():
        return nnx.state(train_state())

    with sharding.mesh_rules(mesh, rules):
        graphdef = nnx.graphdef(nnx.eval_shape(train_state))
        shapes = jax.eval_shape(init)
        shardings = jax.jit(init).lower().compile().output_shardings  # where the trainer's init puts each leaf
        state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
        norm_stats = (0.0, 1.0) if method.needs_stats else None
        train_step, _, batch_sharding = step_lib.make_train_step(config, mesh, graphdef, state)
        lowered = train_step.lower(state, step_lib.batch_shapes(config, batch_sharding),
                                   step_lib.StepInputs(config, norm_stats).shapes(mesh))
        try:
            compiled = lowered.compile()
        except Exception as e:  # XLA:TPU refuses a program whose buffers exceed the HBM
            line = next((l for l in str(e).splitlines() if "memory" in l.lower()), "")
            if "out of memory" not in line.lower() and "resource_exhausted" not in str(e).lower():
                raise
            raise DoesNotFit(line.strip(), dict(mesh.shape), len(devices)) from None
        model = nnx.eval_shape(lambda: step_lib.create_model(config, nnx.Rngs(config.seed)))
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    analytic = model.flops_per_example() * config.batch_size if hasattr(model, "flops_per_example") else None
    return Report(
        topology=f"{kind}:{shape}", devices=len(devices), device_kind=str(devices[0].device_kind),
        mesh=dict(mesh.shape), hbm_bytes=HBM_GIB[kind] * 2 ** 30,
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes),
        xla_flops=float(cost["flops"]) * len(devices) if cost and "flops" in cost else None,
        analytic_flops=analytic, collectives=count_collectives(compiled.as_text()))


def advice(config, mesh: dict, devices: int) -> str:
    """What to change when the step does not fit."""
    hints = []
    if mesh.get("fsdp", 1) < devices:
        hints.append(f"shard the parameters and optimizer state further (--config.mesh with a larger 'fsdp' axis; now "
                     f"{mesh.get('fsdp', 1)})")
    if str(config.get("model", {}).get("remat", "none")) != "full":
        hints.append("recompute activations in the backward pass (--config.model.remat=dots, or full)")
    hints.append(f"a smaller global batch (--config.batch_size, now {config.batch_size}) or a larger topology")
    if str(config.get("model", {}).get("dtype", "float32")) == "float32":
        hints.append("bfloat16 compute (--config.model.dtype=bfloat16)")
    return "try " + "; ".join(hints)


def run(config, topology: str) -> bool:
    """Prints the report; whether the step fits."""
    try:
        r = compile_step(config, topology)
    except DoesNotFit as e:
        print(f"aot {topology}: mesh {e.mesh}, global batch {config.batch_size}")
        print(f"aot {topology} does not fit: the TPU compiler says: {str(e).rstrip('.')}; {advice(config, e.mesh, e.devices)}")
        return False
    gib = 2 ** 30
    print(f"aot {r.topology}: {r.devices} x {r.device_kind}, mesh {r.mesh}, global batch {config.batch_size}")
    print(f"  per device: arguments {r.argument_bytes / gib:.3f} GiB (state + batch; the state is donated: "
          f"{r.alias_bytes / gib:.3f} GiB aliased to the outputs), outputs {r.output_bytes / gib:.3f} GiB, "
          f"temporaries {r.temp_bytes / gib:.3f} GiB, code {r.code_bytes / 2 ** 20:.1f} MiB")
    flops = [f"XLA {r.xla_flops:.3e}" if r.xla_flops else None,
             f"analytic {r.analytic_flops:.3e}" if r.analytic_flops else None]
    print("  FLOPs per step: " + (", ".join(f for f in flops if f) or "not reported"))
    print("  collectives: " + (", ".join(f"{k} x{v}" for k, v in r.collectives.items()) or "none"))
    verdict = "fits" if r.fits else (f"does not fit ({r.total_bytes / r.hbm_bytes:.2f}x); "
                                     + advice(config, r.mesh, r.devices))
    print(f"aot {r.topology} total {r.total_bytes / gib:.2f} GiB of {r.hbm_bytes / gib:.0f} GiB HBM per device: {verdict}")
    return r.fits
