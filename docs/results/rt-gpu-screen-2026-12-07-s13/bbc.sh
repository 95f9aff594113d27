#!/usr/bin/env bash
# BBC headlines, the default distill recipe with static_conv: baseline vs teacher.crossfit=5, splits in parallel
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
python3 -c "
from transformers import AutoModel, AutoTokenizer
m = AutoModel.from_pretrained('.gpu/minilm16').float(); m.save_pretrained('/tmp/minilm')
AutoTokenizer.from_pretrained('.gpu/minilm16').save_pretrained('/tmp/minilm')" > /dev/null 2>&1
export OMP_NUM_THREADS=3
run() {
  s=$1; name=$2; shift 2; t0=$(date +%s)
  python3 train.py +experiment=distill data=files data.train=$PWD/.gpu/bbc_headlines.csv model=static_conv seed=1 \
    logger=csv export.enabled=false trainer=gpu trainer.precision=32-true teacher.source=/tmp/minilm teacher.seed=42 \
    data.split_seed=$s "$@" hydra.run.dir=/tmp/runs/b${s}_$name > /tmp/runs/b${s}_$name.log 2>&1
  rc=$?
  python3 -c "
import json
m=json.load(open('/tmp/runs/b${s}_$name/metrics.json'))
print('b$s $name val %.2f test %.2f teacher %.2f oof %s' % (100*m['val/acc'],100*m['test/acc'],100*m['teacher/test_acc'],m.get('teacher/crossfit_train_acc')), 'rc=$rc', '$(( $(date +%s) - t0 ))s')
" >> $OUT/results.txt 2>&1 || echo "b$s $name FAILED rc=$rc" >> $OUT/results.txt
}
mkdir -p /tmp/runs
for s in 1 2 3; do ( run $s base; run $s cf5 teacher.crossfit=5 ) & done
wait
