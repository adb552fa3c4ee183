/**
 * A strict TypeScript consumer of the installed attnres package (tsconfig.json here:
 * exactOptionalPropertyTypes, skipLibCheck false). test/package.test.ts compiles it with
 * `tsc --noEmit`: every public entry point must type-check, and a wrong config must not.
 */
import {
  type Batch,
  type DecoderLMConfig,
  AdamW,
  DecoderLM,
  generate,
  paramGroups,
  trainStep,
} from "attnres";
import { analyzeModel, type AnalysisReport } from "attnres/analysis";
import { CONVERT_MODES, convertCheckpoint } from "attnres/convert";
import { prepare, loadPrepared, evalBatches } from "attnres/data";
import { evaluateMc, readMcTasks } from "attnres/eval";
import { loadCheckpoint, saveCheckpoint, readSafetensors } from "attnres/io";
import { lineChart } from "attnres/plot";

const config: DecoderLMConfig = {
  vocab_size: 64,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  attnres_mode: "delta_block",
  attnres_num_blocks: 2,
};
const model = new DecoderLM(config, { seed: 1 });
const batch: Batch = { ids: new Int32Array(16), targets: new Int32Array(16), B: 2, T: 8 };
const opt = new AdamW(paramGroups(model, 1e-3, 0.1));
const { loss } = trainStep(model, opt, batch, 1, 1, 1);
const report: AnalysisReport = analyzeModel(model, [batch]);
const out: { ids: Int32Array[] } = generate(model, Int32Array.from([1, 2, 3]), {
  maxNewTokens: 4,
  temperature: 0,
});
export const used = [loss, report.mode, out.ids.length, CONVERT_MODES.length];
export const fns = [
  convertCheckpoint,
  prepare,
  loadPrepared,
  evalBatches,
  evaluateMc,
  readMcTasks,
  loadCheckpoint,
  saveCheckpoint,
  readSafetensors,
  lineChart,
];

// A misspelled field, a wrong type and a missing required field are compile errors.
// @ts-expect-error num_layers is not a config field
new DecoderLM({ ...config, num_layers: 2 });
// @ts-expect-error hidden_size is a number
new DecoderLM({ ...config, hidden_size: "32" });
// @ts-expect-error an unknown residual mode
new DecoderLM({ ...config, attnres_mode: "dense" });
// @ts-expect-error vocab_size is required
new DecoderLM({ hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4 });
