#!/usr/bin/env bash
# Download Multi30k task 1 (Elliott et al. 2016: train, val, test_2016_flickr in en, de and
# fr; 2 MB) from the dataset's own repository into DIR (default: data/multi30k, where the
# Multi30k recipes look with their data.root: data), and check every file's line count.
#   bash scripts/get-multi30k.sh [DIR]
# MULTI30K_URL names another copy (a mirror, or file:///path/to/a/local/copy).
set -euo pipefail
dir=${1:-data/multi30k}
url=${MULTI30K_URL:-https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw}
declare -A lines=([train]=29000 [val]=1014 [test_2016_flickr]=1000)
mkdir -p "$dir"
for split in train val test_2016_flickr; do
  for lang in en de fr; do
    file="$dir/$split.$lang.gz"
    if [ ! -s "$file" ]; then
      curl --fail --silent --show-error --location --retry 3 -o "$file.part" "$url/$split.$lang.gz"
      mv "$file.part" "$file"
    fi
    found=$(gzip -dc "$file" | wc -l) || found="unreadable"
    if [ "$found" != "${lines[$split]}" ]; then
      echo "error: $file has $found lines, not ${lines[$split]}; delete it and run this again" >&2
      exit 1
    fi
  done
done
echo "Multi30k is in $dir"
