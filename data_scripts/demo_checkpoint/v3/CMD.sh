# Trial 16 of data_scripts/README.md (issue 24): the run's command; later sittings append options (see README.md here).
# Starts from trial 15's state (data_scripts/demo_checkpoint/v2/checkpoint.pt, step 4800) on the version-3 world.
.venv/bin/python data_scripts/train_demo_model.py --out runs/demo_v3 --size s8 \
  --init-from data_scripts/demo_checkpoint/v2/checkpoint.pt --version 3 --batch 8 \
  --lookup 16 --indirect 16 --lm-aux-weight 0.5 --lm-aux-layer 2 --answer-aux-weight 0.5 --answer-aux-layer 4 \
  --letter-weight 5 --eval-every 200 --eval-n 20 --no-eval-fixed --no-bf16 --threads 2 \
  --bind-weight 1 --bind-layer 6 --probe-weight 0.5 --flag-weight 1 --ground-weight 1 --ground-layer 4 --pos-weight 5 \
  --ground-task-weight object_existence:4 --ground-probe-weight 1 \
  --track-weight 1 --track-layer 2 --track-head 1 --track-probe-weight 0.5 --motion-weight 3 \
  --pos-ordinal-weight 5 --task-mix moving_direction:2 --task-mix object_count:2 --task-mix object_existence:2 \
  --prune-prob 0.6 --prune-informed-prob 0.7 --prune-informed-bias 1:3 \
  --steps 4000 --warmup 100 --lr 3e-4 --curriculum-steps 0 --eval-blind --ckpt-every 50 \
  --eval-pruned random:0.25:renumber --eval-pruned oracle:0.25:renumber \
  --eval-pruned random:0.25:original --eval-pruned oracle:0.25:original "$@"
