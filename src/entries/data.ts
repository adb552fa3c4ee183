/** `attnres/data`: corpora, tokenizers (byte, BPE, HF tokenizer.json), prepared datasets and batches. */
/// <reference types="node" preserve="true" />
import "../node-version.js";
export * from "../data/prepare.js";
export * from "../data/corpus.js";
export * from "../data/bpe.js";
export * from "../data/hf-tokenizer.js";
export * from "../data/tokenizer.js";
export * from "../data/prepared.js";
export * from "../data/batches.js";
