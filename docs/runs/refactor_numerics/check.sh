#!/usr/bin/env bash
# check.sh TREE OUT: tiny fixed-seed runs whose logged losses must not change with a refactor.
tree=$1; out=$2; rm -rf $out; mkdir -p $out
cd $tree
common="--data_dir=/root/eq/data --logdir=$out --d_model=16 --num_heads=2 --d_ffn=32 --mem_len=4 --cutoffs=10,25 --epochs=2 --log_every=1 --warmup_steps=3 --max_lr=3e-3 --precision=float32 --intra_op_threads=1"
python3 train.py $common --model_name=sp --num_layers=3 --single_path --arch_holdout=0.2 --cost_weight=0.1 --arch_freeze_steps=4 --arch_schedule=weights --arch_lr=1e-2 > $out/sp.out 2>&1
python3 train.py $common --model_name=mix --num_layers=3 --gumbel_per_example --straight_through --arch_holdout=0.25 --cost_weight=0.2 --cost_source=table --cost_table=3,2,0 --arch_schedule=after_warmup > $out/mix.out 2>&1
python3 train.py $common --model_name=fixed --architecture=ADI > $out/fixed.out 2>&1
for r in sp mix fixed; do grep -oE "step [0-9]+ (loss|validation).*|test: .*|Derived architecture.*" $out/$r/training_log.log > $out/$r.losses; done
wc -l $out/*.losses
