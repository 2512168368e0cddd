#!/usr/bin/env bash
# Split Multi30k German-English into a general part and a sports domain, for the README's
# fine-tuning example: a pair belongs to the domain when either side names a ball game, a
# player or a team. Writes, into OUT (default: data/multi30k-sports):
#   general.{train,valid}.tsv  the pairs outside the domain (the base model's data)
#   sports.{train,valid}.tsv   the domain's pairs (the fine-tuning data)
#   general.test.{de,en}, sports.test.{de,en}   test_2016_flickr, split the same way
#   bash scripts/split-multi30k-domain.sh [MULTI30K_DIR] [OUT]
set -euo pipefail
src=${1:-data/multi30k}
out=${2:-data/multi30k-sports}
words='ball|balls|soccer|football|basketball|baseball|volleyball|tennis|hockey|rugby|golf'
words+='|player|players|team|teams|fußball|spieler|spielerin|mannschaft'
mkdir -p "$out"
# a tab inside a sentence (Multi30k has one) becomes a space: the TSV has one per line
text() { gzip -dc "$src/$1" | tr "\t" " "; }
pairs() { paste <(text "$1.de.gz") <(text "$1.en.gz"); }
for split in train:train val:valid test_2016_flickr:test; do
  name=${split%%:*} part=${split##*:}
  pairs "$name" | grep -iwE "$words" > "$out/sports.$part.tsv" || true
  pairs "$name" | grep -viwE "$words" > "$out/general.$part.tsv" || true
done
for domain in general sports; do
  cut -f1 "$out/$domain.test.tsv" > "$out/$domain.test.de"
  cut -f2 "$out/$domain.test.tsv" > "$out/$domain.test.en"
  rm "$out/$domain.test.tsv"
done
wc -l "$out"/*.tsv "$out"/*.test.de | sed '$d' >&2
