#!/usr/bin/env bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
python3 -c "
from transformers import AutoModel, AutoTokenizer
m = AutoModel.from_pretrained('.gpu/minilm16').float(); m.save_pretrained('/tmp/minilm')
AutoTokenizer.from_pretrained('.gpu/minilm16').save_pretrained('/tmp/minilm')" > /dev/null 2>&1
python3 scripts/bench_labelling.py --texts .gpu/rotten_tomatoes.csv --n 16384 --repeats 3 --cpu-repeats 1 \
  --teacher /tmp/minilm --json $OUT/bench_labelling.json > $OUT/bench_labelling.log 2>&1
echo "bench done $(date +%T)" >> $OUT/results.txt
printf '1 e2e\n' > /tmp/one.txt
THREADS=16 bash .gpu/grid.sh /tmp/one.txt
grep -h "Stage\|teacher outputs\|labelled\|Fitting\|n-gram" /tmp/runs/s1_e2e.log | cut -c1-200 | tail -20 > $OUT/e2e_stages.txt
grep -o '"timings": {[^}]*}' /tmp/runs/s1_e2e/metrics.json >> $OUT/e2e_stages.txt
python3 -c "import json;m=json.load(open('/tmp/runs/s1_e2e/metrics.json'));print(json.dumps(m.get('timings'),indent=1))" >> $OUT/e2e_stages.txt
