#!/usr/bin/env bash
# compare.sh A B: the logged losses (all but tokens/s), results.json and pi_history.jsonl of each run must match.
for r in sp mix fixed; do
  for d in $1 $2; do
    grep -oE "step [0-9]+ (loss|validation).*|test: .*|Derived architecture.*" $d/$r/training_log.log | sed 's/tokens_per_second [0-9.e+]*//' > $d/$r.cmp
  done
  cmp -s $1/$r.cmp $2/$r.cmp && echo "$r: $(wc -l < $1/$r.cmp) logged lines identical" || echo "$r: logged lines DIFFER"
  for f in results.json pi_history.jsonl; do
    [ -f $1/$r/$f ] || continue
    cmp -s $1/$r/$f $2/$r/$f && echo "$r: $f identical" || echo "$r: $f DIFFERS"
  done
done
