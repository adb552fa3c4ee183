/**
 * The --engine flag and the torch engine's flags, shared by train, compare and finetune:
 *   --engine ts|torch  --nproc-per-node N  --nnodes N --node-rank R --master-addr A --master-port P
 *   --device cpu|cuda  --dtype float32|bfloat16  --fsdp  --compile
 * `torchOptionsFrom(flags)` gives the TorchOptions for src/train/torch-engine.ts (undefined for the
 * TypeScript engine) and rejects torch flags given without --engine torch.
 */
import { type Command, InvalidArgumentError } from "commander";
import type { TorchOptions } from "../train/torch-engine.js";
import { nonNegativeInt, positiveInt } from "./common.js";

/** The engine flags: which engine, and the torch engine's launch options. */
export interface EngineFlags extends TorchOptions {
  engine?: "ts" | "torch";
}

const choice =
  <T extends string>(values: readonly T[]) =>
  (v: string): T => {
    if (!(values as readonly string[]).includes(v))
      throw new InvalidArgumentError(`expected one of ${values.join(", ")}`);
    return v as T;
  };

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError("expected a port (1-65535)");
  return n;
}

export function engineOptions(cmd: Command): Command {
  return cmd
    .option(
      "--engine <ts|torch>",
      "training engine: ts (this process) or torch (PyTorch via torchrun)",
      choice(["ts", "torch"] as const),
    )
    .option("--nproc-per-node <n>", "torch: processes per node (DDP)", positiveInt)
    .option("--nnodes <n>", "torch: number of nodes", positiveInt)
    .option("--node-rank <r>", "torch: this node's rank", nonNegativeInt)
    .option("--master-addr <host>", "torch: address of node 0")
    .option("--master-port <port>", "torch: port on node 0", port)
    .option("--device <cpu|cuda>", "torch: device (cuda uses NCCL)", choice(["cpu", "cuda"] as const))
    .option(
      "--dtype <float32|bfloat16>",
      "torch: compute dtype (bfloat16 = autocast)",
      choice(["float32", "bfloat16"] as const),
    )
    .option("--fsdp", "torch: shard parameters, gradients and optimizer state (FSDP; torch >= 2)")
    .option("--compile", "torch: torch.compile the model (torch >= 2)");
}

const TORCH_ONLY: [keyof EngineFlags, string][] = [
  ["nprocPerNode", "--nproc-per-node"],
  ["nnodes", "--nnodes"],
  ["nodeRank", "--node-rank"],
  ["masterAddr", "--master-addr"],
  ["masterPort", "--master-port"],
  ["device", "--device"],
  ["dtype", "--dtype"],
  ["fsdp", "--fsdp"],
  ["compile", "--compile"],
];

/** TorchOptions for --engine torch; undefined for the TypeScript engine (torch flags are then an error). */
export function torchOptionsFrom(f: EngineFlags): TorchOptions | undefined {
  if (f.engine !== "torch") {
    const given = TORCH_ONLY.find(([k]) => f[k] !== undefined);
    if (given) throw new Error(`${given[1]} is a flag of the torch engine; add --engine torch`);
    return undefined;
  }
  return {
    nprocPerNode: f.nprocPerNode,
    nnodes: f.nnodes,
    nodeRank: f.nodeRank,
    masterAddr: f.masterAddr,
    masterPort: f.masterPort,
    device: f.device,
    dtype: f.dtype,
    fsdp: f.fsdp,
    compile: f.compile,
  };
}
