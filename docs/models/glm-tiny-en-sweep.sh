#!/usr/bin/env bash
# glm-tiny-en's shape sweep (docs/models/glm-tiny-en.md, "How the shape was chosen").
#
# Each candidate (depth, width, vocabulary) is pretrained with glm-tiny-en's config and data for the same share of
# the two-hour budget: BASE_STEPS for the 6 x 256, 8,000-piece shape, scaled down or up by the candidate's compute per
# token, so that every run costs about the same time. Each is then scored on the first LINES lines of the
# WikiText-103 test file by `torchglm evaluate wikitext`. The figure that decides is the word-level (adjusted)
# perplexity, the one that is comparable across vocabularies. Every candidate stays under the 25 MB cap for the
# shipped safetensors (bf16).
#
# Run from a checkout after steps 1-3 of the card's "Reproduce" with V=8000 R=runs/glm-tiny-en-8k (the 8,000-piece
# tokenizer and its shards in $R, as for the first version; the sweep's base shape is that version's):
#   bash docs/models/glm-tiny-en-sweep.sh          # about 50 min on 2 CPU cores at BASE_STEPS=100
# A candidate whose wikitext.json exists is skipped, so a stopped sweep goes on where it stopped.
set -euo pipefail
S=${S:-../shared/data}
R=${R:-runs/glm-tiny-en-8k}
W=${W:-runs/glm-tiny-en-sweep}
BASE_STEPS=${BASE_STEPS:-100}   # 1/22 of the 2,200 steps the 8,000-piece glm-tiny-en trained for
LINES=${LINES:-1000}            # WikiText-103 test lines scored (the test file has 4,358)
mkdir -p "$W"

# Tokenizers and shards for the other vocabularies: the same text and commands as the card's steps 2-3.
for V in 4000 16000; do
  [ -e "$W/data-$V/eval" ] && continue
  python -c "import glob; from torchglm import train_tokenizer; \
    train_tokenizer(sorted(glob.glob('$S/corpus/gutenberg/*.txt')) + ['$S/corpus/tinyshakespeare.txt', '$R/wiki.valid.txt'], \
                    kind='bpe', vocab_size=$V, lowercase=False, save_directory='$W/tokenizer-$V')"
  torchglm prepare-data $(ls $S/corpus/gutenberg/*.txt | grep -v carroll) $S/corpus/tinyshakespeare.txt $R/wiki.valid.txt \
    --format paragraphs --output "$W/data-$V/train" --tokenizer "$W/tokenizer-$V"
  torchglm prepare-data $S/corpus/gutenberg/carroll-alice.txt --format paragraphs --output "$W/data-$V/eval" \
    --tokenizer "$W/tokenizer-$V"
done
[ "${1:-}" = prepare ] && exit 0   # `bash glm-tiny-en-sweep.sh prepare`: only the tokenizers and shards

# name layers hidden heads pieces
candidate() {
  local name=$1 layers=$2 hidden=$3 heads=$4 pieces=$5 data ids steps
  [ -e "$W/$name/wikitext.json" ] && return 0
  if [ "$pieces" = 8000 ]; then data=$R/data; else data=$W/data-$pieces; fi
  ids=$(( (pieces + 8 + 63) / 64 * 64 ))   # the BPE's pieces + GLM's 8 command tokens, padded to a multiple of 64
  # compute per token ~ layers * (12 d^2 + 2 s d) + d * ids (the tied output layer), relative to 6 x 256 x 8,064
  steps=$(python -c "c = lambda l, d, v: l * (12 * d * d + 2 * 256 * d) + d * v; \
    print(round($BASE_STEPS * c(6, 256, 8064) / c($layers, $hidden, $ids)))")
  echo "== $name: $layers x $hidden, $heads heads, $ids ids, $steps steps"
  torchglm pretrain --config configs/pretrain/glm-tiny-en.yaml \
    --model.overrides "{num_layers: $layers, hidden_size: $hidden, num_attention_heads: $heads, max_sequence_length: 256, vocab_size: $ids}" \
    --data.path "$data/train" --data.eval_path "$data/eval" --train.output_dir "$W/$name" \
    --train.steps "$steps" --train.eval_interval "$steps" --schedule.warmup_ratio 0.1 \
    --checkpoint.interval "$steps" --logging.progress_bar false
  torchglm evaluate wikitext --model "$W/$name/final" --seq-length 256 --overlap 128 --limit "$LINES" \
    --no-progress --output "$W/$name/wikitext.json"
}

candidate 6x256-8k 6 256 4 8000     # the first version's shape
candidate 4x256-8k 4 256 4 8000     # shallower
candidate 8x256-8k 8 256 4 8000     # deeper
candidate 6x320-8k 6 320 5 8000     # wider (6 x 384 would be 27 MB in bf16, over the cap)
candidate 6x256-4k 6 256 4 4000     # smaller vocabulary
candidate 6x256-16k 6 256 4 16000   # larger vocabulary

# One table: steps, wall time, held-out loss (same tokenizer only), WikiText-103 token and word perplexity.
python - "$W" <<'EOF'
import json, sys
from pathlib import Path

from safetensors.torch import load_file

root = Path(sys.argv[1])
rows = {}
for run in sorted(p.parent for p in root.glob("*/wikitext.json")):
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "loss" in r]
    held_out = [r for r in log if "eval/loss" in r]
    wikitext = json.loads((run / "wikitext.json").read_text())
    config = json.loads((run / "final" / "config.json").read_text())
    rows[run.name] = {
        "layers": config["num_layers"], "hidden": config["hidden_size"], "ids": config["vocab_size"],
        "parameters": sum(t.numel() for t in load_file(run / "final" / "model.safetensors").values()),
        "steps": train[-1]["step"], "train_seconds": round(train[-1]["time"] - log[0]["time"], 1),
        "held_out_loss": held_out[-1]["eval/loss"], "wikitext_token_ppl": wikitext["ppl"],
        "wikitext_word_ppl": wikitext["adjusted_ppl"], "wikitext_words": wikitext["num_words"],
    }
    print(f"{run.name:12} {rows[run.name]['parameters'] / 1e6:5.2f}M {rows[run.name]['steps']:4d} steps {rows[run.name]['train_seconds']:7.1f} s  "
          f"held-out loss {rows[run.name]['held_out_loss']:.3f}  WikiText token ppl {wikitext['ppl']:8.1f}  "
          f"word ppl {wikitext['adjusted_ppl']:8.1f}")
(root / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
EOF
