#!/usr/bin/env bash
# usage: .gpu/run.sh "1 2 3"  -- per split: the baseline student (rep + head 128), then the cross-fitted one
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
python3 -c "
from transformers import AutoModel, AutoTokenizer
m = AutoModel.from_pretrained('.gpu/minilm16').float(); m.save_pretrained('/tmp/minilm')
AutoTokenizer.from_pretrained('.gpu/minilm16').save_pretrained('/tmp/minilm')" > $OUT/convert.log 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt
export OMP_NUM_THREADS=5
run() {  # split name overrides...
  s=$1; name=$2; shift 2
  echo "start s$s $name $(date +%T)" >> $OUT/times.txt
  python3 train.py +experiment=distill data=files data.train=$PWD/.gpu/rotten_tomatoes.csv model=static_conv seed=1 \
    logger=csv export.enabled=false trainer=gpu trainer.precision=32-true teacher=ensemble teacher.source=/tmp/minilm \
    teacher.seed=42 teacher.pooling=mean teacher.freeze_embeddings=false teacher.lr=1e-4 distill.loss.alpha=1.0 \
    distill.augment.label=teacher distill.augment.seed=0 distill.augment.replace=0.15 distill.augment.copies=8 \
    model.head_hidden=128 teacher.ngram.n_jobs=4 data.split_seed=$s "$@" hydra.run.dir=/tmp/runs/s${s}_$name \
    > /tmp/runs/s${s}_$name.log 2>&1
  echo "end s$s $name rc=$? $(date +%T)" >> $OUT/times.txt
  mkdir -p $OUT/s${s}_$name
  cp /tmp/runs/s${s}_$name/metrics.json $OUT/s${s}_$name/ 2>/dev/null
  for d in /tmp/runs/s${s}_$name/teacher*; do [ -f $d/metrics.json ] && cp $d/metrics.json $OUT/s${s}_$name/$(basename $d).json; done
  tail -c 20000 /tmp/runs/s${s}_$name.log > $OUT/s${s}_$name/tail.log
}
mkdir -p /tmp/runs
for s in $1; do
  ( run $s base; run $s cf5 teacher.crossfit=5 ) &
done
wait
