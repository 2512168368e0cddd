#!/usr/bin/env bash
# The README's fine-tuning example end to end, printing its figures: a Multi30k De->En
# Transformer trained without the sports pairs, then fine-tuned on them (--init-from), with
# BLEU on the sports and the general test lines before and after, and each stage's time.
#   bash bench/finetune_domain.sh [DATA_ROOT] [WORK]
# DATA_ROOT holds multi30k/ (default: data, where scripts/get-multi30k.sh puts it); WORK
# receives the split, data dirs and runs (default: finetune-work). Steps already done (their
# output exists) are skipped, so an interrupted run continues where it stopped.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(realpath "${1:-data}")
work=${2:-finetune-work}
mkdir -p "$work" && cd "$work"
lscpu | grep -E "Model name" >&2
split=data/multi30k-sports
[ -d "$split" ] || bash "$repo/scripts/split-multi30k-domain.sh" "$root/multi30k" "$split"
recipes=$repo/recipes
[ -f data-bin/m30k-general/manifest.json ] ||
  nmt preprocess "$recipes/multi30k-de-en-sports-base.yaml" --out data-bin/m30k-general --json
nmt train "$recipes/multi30k-de-en-sports-base.yaml" --data data-bin/m30k-general \
  --out runs/m30k-general --json | tee base.json
[ -f data-bin/m30k-sports/manifest.json ] ||
  nmt preprocess "$recipes/multi30k-de-en-sports-finetune.yaml" --out data-bin/m30k-sports --json
nmt train "$recipes/multi30k-de-en-sports-finetune.yaml" --data data-bin/m30k-sports \
  --out runs/m30k-sports --init-from runs/m30k-general/best.pt --json | tee tuned.json
for model in runs/m30k-general/best.pt runs/m30k-sports/best.pt; do
  for domain in sports general; do
    test=$split/$domain.test
    bleu=$(nmt eval "$model" --src "$test.de" --ref "$test.en" -m bleu --json 2>/dev/null |
      python -c "import json, sys; print(json.load(sys.stdin)['bleu'])")
    echo "$model on $domain test ($(wc -l < "$test.de") lines): BLEU $bleu"
  done
done
