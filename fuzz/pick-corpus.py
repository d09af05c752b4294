#!/usr/bin/env python3
"""Picks a small seed corpus from a long fuzz run.

usage: pick-corpus.py CONTROL_FILE OUT_DIR LIMIT

CONTROL_FILE is the control file of a libFuzzer merge over the committed
corpus and the run's corpus (see RELIABILITY.md, "Fuzzing"). Keeps every
`seed-*` and `crash-*` file, then adds, LIMIT times at most, the input that
covers the most edges not yet covered (as the merge recorded them: the
edges each input added in merge order), naming it `min-<sha1 prefix>`.
"""
import sys, os, shutil
ctl, outdir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(ctl).read().split('\n')
n = int(lines[0]); nfirst = int(lines[1]); files = lines[2:2+n]
cov = {}
for l in lines[2+n:]:
    p = l.split()
    if len(p) >= 2 and p[0] == 'COV':
        cov[int(p[1])] = set(p[2:])
total = set().union(*cov.values()) if cov else set()
covered = set(); chosen = []
# the hand-written seeds (files named seed-* or crash-*) are always kept
for i, f in enumerate(files):
    b = os.path.basename(f)
    if b.startswith('seed-') or b.startswith('crash-'):
        chosen.append(i); covered |= cov.get(i, set())
seeds_cov = len(covered)
extra = 0
while extra < limit:
    best = max(cov, key=lambda i: (len(cov[i] - covered), -os.path.getsize(files[i])))
    gain = len(cov[best] - covered)
    if gain == 0: break
    chosen.append(best); covered |= cov[best]; extra += 1
os.makedirs(outdir, exist_ok=True)
import hashlib
for i in chosen:
    b = os.path.basename(files[i])
    if not (b.startswith('seed-') or b.startswith('crash-')):
        b = 'min-' + hashlib.sha1(open(files[i],'rb').read()).hexdigest()[:16]
    shutil.copy(files[i], os.path.join(outdir, b))
print(f"edges: all {len(total)}, seeds {seeds_cov}, chosen {len(covered)} with {len(chosen)} files ({extra} picked)")
