#!/usr/bin/env python
"""Train the demo video LLM (a plain LlavaOnevisionForConditionalGeneration) on the synthetic benchmark, on CPU.

    python data_scripts/train_demo_model.py --out runs/demo_model --minutes 30          # one sitting
    python data_scripts/train_demo_model.py --out runs/demo_model --minutes 30          # continues from the checkpoint
    python data_scripts/train_demo_model.py --out runs/demo_model --eval-only           # evaluate the checkpoint

The entry point of the recipe, which lives in ``prunevid/synthetic/training/`` (its docstring describes the recipe;
``--help`` lists every option). ``data_scripts/demo_checkpoint/`` keeps the record of the trials: the training state
of the shipped model, its run's held-out curve and the sittings that made it.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid.synthetic.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
