#!/usr/bin/env bash
# usage: .gpu/grid.sh FILE -- each line of FILE is a stream run in parallel with the others: runs separated by ';',
# each "split name overrides...", one after the other. One summary line per run in $OUT/results.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
[ -f /tmp/minilm/config.json ] || python3 -c "
from transformers import AutoModel, AutoTokenizer
m = AutoModel.from_pretrained('.gpu/minilm16').float(); m.save_pretrained('/tmp/minilm')
AutoTokenizer.from_pretrained('.gpu/minilm16').save_pretrained('/tmp/minilm')" > /dev/null 2>&1
export OMP_NUM_THREADS=${THREADS:-2}
mkdir -p /tmp/runs
run() {  # split name overrides...
  s=$1; name=$2; shift 2
  t0=$(date +%s)
  python3 train.py +experiment=distill data=files data.train=$PWD/.gpu/rotten_tomatoes.csv model=static_conv seed=1 \
    logger=csv export.enabled=false trainer=gpu trainer.precision=32-true teacher=ensemble teacher.source=/tmp/minilm \
    teacher.seed=42 teacher.pooling=mean teacher.freeze_embeddings=false teacher.lr=1e-4 distill.loss.alpha=1.0 \
    distill.augment.label=teacher distill.augment.seed=0 distill.augment.replace=0.15 distill.augment.copies=8 \
    model.head_hidden=128 data.split_seed=$s "$@" hydra.run.dir=/tmp/runs/s${s}_$name \
    > /tmp/runs/s${s}_$name.log 2>&1
  rc=$?
  python3 -c "
import json,sys
try:
    m=json.load(open('/tmp/runs/s${s}_$name/metrics.json'))
    print('s$s $name', 'val %.2f test %.2f teacher %.2f epoch %s' % (100*m['val/acc'],100*m['test/acc'],100*m['teacher/test_acc'],m['best_checkpoint'].split('/')[-1]), 'rc=$rc', '$(( $(date +%s) - t0 ))s', '$*')
except Exception as e:
    print('s$s $name FAILED rc=$rc', e, '$*')
" >> $OUT/results.txt
  [ $rc = 0 ] || tail -c 3000 /tmp/runs/s${s}_$name.log > $OUT/fail_s${s}_$name.log
}
while IFS= read -r line; do
  ( IFS=';'; for spec in $line; do IFS=$' \t\n'; run $spec; done ) &
done < "$1"
wait
