#!/usr/bin/env bash
# The conversion walkthrough of docs/convert.md: pretrain a small standard baseline on SOTU (the npm start preset),
# convert it to delta and delta-block, fine-tune all three for the same 200 steps, then eval and eval-mc each.
# Run from the repository root after scripts/setup.sh; writes runs/wt/.
set -e
A="node bin/attnres.mjs"
D=data/sotu-bpe-4096
$A prepare --corpus sotu --tokenizer bpe --vocab-size 4096 --out $D
$A train --preset start --out runs/wt/base
$A convert --checkpoint runs/wt/base/checkpoint --out runs/wt/delta --mode delta
$A convert --checkpoint runs/wt/base/checkpoint --out runs/wt/delta-block --mode delta-block --blocks 2
for m in base delta delta-block; do
  src=runs/wt/$m; [ $m = base ] && src=runs/wt/base/checkpoint
  $A finetune --checkpoint $src --data $D --steps 200 --batch-size 16 --seq-len 128 --lr 3e-4 --routing-lr 3e-3 --eval-every 100 --out runs/wt/ft-$m
done
for m in base delta delta-block; do
  echo "== $m: converted (before fine-tuning)"; src=runs/wt/$m; [ $m = base ] && src=runs/wt/base/checkpoint
  $A eval --checkpoint $src --data $D --seq-len 128 --batch-size 16 --batches 16
  echo "== $m: after fine-tuning"
  $A eval --checkpoint runs/wt/ft-$m/checkpoint --data $D --seq-len 128 --batch-size 16 --batches 16
  $A eval-mc --checkpoint runs/wt/ft-$m/checkpoint --tasks examples/tasks/tiny-mc.jsonl
done
