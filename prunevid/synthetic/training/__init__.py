"""The demo model's training recipe: how the kit's demo LLaVA-OneVision learns the synthetic world, on CPU.

    python data_scripts/train_demo_model.py --out runs/demo_model --minutes 30          # one sitting
    python data_scripts/train_demo_model.py --out runs/demo_model --minutes 30          # continues from the checkpoint
    python data_scripts/train_demo_model.py --out runs/demo_model --eval-only           # evaluate the checkpoint

This package owns the recipe; ``data_scripts/train_demo_model.py`` is its entry point (it calls ``main``, and its
command lines are the ones the model card and ``data_scripts/demo_checkpoint/`` record). The record of the trials
lives in ``data_scripts/demo_checkpoint/`` (the training state of the shipped model, the held-out curve of its run,
the sittings that made it, the model card's hand-written notes); the trials themselves are told in
``data_scripts/README.md``.

One file per part, each importing only the ones listed before it: ``sequences.py`` (the prompt and the training
sequences with their loss weights, padding, pixels, the answer classes), ``labels.py`` (training-only targets from
the generator's ground truth), ``pruning.py`` (pruned input: which video tokens a batch keeps, merged or dropped,
under re-numbered or original positions), ``batches.py`` (the curriculum and the seeded batches), ``heads.py`` (training-only
heads and hooks, the supervised attention heads), ``losses.py`` (the objective), ``vision.py`` (the vision-only
phase: the tower, projector and per-patch head trained alone, with its held-out shape measurement),
``evaluation.py`` (held-out evaluation), ``cli.py`` (the options), ``checkpoints.py`` (checkpoint, exported model,
recorded command), ``loop.py`` (schedule, optimizer, ``main``). Nothing here imports ``prunevid.benchmarks`` or the harness, and
``prunevid.synthetic`` never imports this package: importing the world does not load the trainer.

Training data is drawn fresh every step from ``prunevid.synthetic`` (in memory, no mp4) with a random stream
``default_rng([seed, step])``, so a run is reproducible from its seed and a resumed run sees exactly the batches
an uninterrupted one would. Every ``--ckpt-every`` steps the model, the auxiliary head, the optimizer, the
torch RNG state and the step are saved to ``<out>/checkpoint.pt``; rerunning the same command continues from
there. At the end of a sitting the model is also written with ``save_pretrained`` (safetensors) plus the
tokenizer to ``<out>/model``, which ``prunevid.models.load(<out>/model)`` loads.

Prompts are rendered exactly as the official MVBench protocol does, in the LLaVA-OneVision chat template:
the VideoChat2 system prompt as a system turn, ``Question: ...\\nOptions:\\n(A) ...\\nOnly give the best option.``
as the user text after the video, and the assistant answer prefix ``Best option:(``; the target is
``B) red<|im_end|>``. Recipes for more signal per CPU second (all switchable):

- several questions about the same video in one sequence (one vision pass, many answers): the first turn is the
  evaluation prompt, later turns ask the other tasks' questions that are well defined on that video;
- a dense caption turn ("Describe the video.") listing every object, its motion, colour change and the scenes;
- an auxiliary per-patch loss on the projected vision features (colour, shape and scene of every 8 px patch),
  through a linear head used in training only: the saved model stays a plain LLaVA-OneVision;
- a per-video-token loss on the hidden states of one LLM layer (``--lm-aux-weight``): causal targets per token
  (the object under it, its motion and colour change so far, objects seen so far, the scenes), so that the later
  layers can read what the questions ask about;
- an answer-content loss (``--answer-aux-weight``) at every position that predicts an option letter, through one
  head shared with the text-only look-up sequences, so that the content is there before the last layer binds it
  to a letter;
- text-only option look-up sequences (``--lookup``, ``--lookup-pretrain``) that teach that binding cheaply;
- binding losses at the same positions (``--bind-weight``, ``--probe-weight``, ``--flag-weight``): one attention
  head of the last layer is told to look at the gold option's tokens, and probes on the option tokens ask for the
  option's letter and for whether it is the answer;
- a read-out loss (``--ground-weight``): one attention head of an earlier layer (``--ground-layer``) is told to
  look, from each letter position of a video question, at the video tokens that hold the answer (the asked-about
  object's cells, the last frame for the scene change, the newline token for the count), re-weighted per task with
  ``--ground-task-weight``, with a probe (``--ground-probe-weight``) that must read the named object's colour and
  shape at the letter position, where that head's query starts;
- a per-patch position loss (``--pos-weight``): each patch's row and column read linearly from the projector
  output, so that the features the LLM receives say where they are (motion needs it); ``--pos-ordinal-weight``
  asks for them as one direction per axis (a regression), so that a displacement is a linear difference;
- a tracking loss (``--track-weight``): one attention head (``--track-layer``, ``--track-head``) is told to look,
  from every video token an object holds after its first frame, at that object's tokens in its first frame, with
  a probe (``--track-probe-weight``) that must read where those were from the layer's output; ``--motion-weight``
  weighs "motion so far" among the per-video-token targets (moving direction compares where an object is with
  where it was);
- a curriculum: fewer objects, frames (``--frames-schedule``) and a fixed option order first, then the full task
  distribution, shuffled; ``--task-mix`` re-weights which task's videos are drawn (uniform by default);
- a vision-only phase (``--vision-only``, its own run): the vision tower, the projector and the per-patch head (and
  the position heads) trained alone on the per-patch losses with ``--shape-weight`` at their own rate, the language
  model untouched; a joint run then starts from it (``--init-from``). Trained end to end, the tower never put an
  object's shape into its tokens (trial 16 of data_scripts/README.md);
- zero-initialised residual branches, bf16 autocast where the CPU has native bf16 (``--no-bf16`` otherwise),
  ``--device cuda`` on a GPU, AdamW with warmup and cosine decay.

All heads used by these losses are training-only: the saved model is a plain LLaVA-OneVision.

Evaluation (every ``--eval-every`` steps) runs the official single-question prompt on a held-out set generated
from the ``val`` seed and scores the letter with the highest logit among the item's options, printing
per-task accuracy and chance.

"""
from .sequences import (ANSWER_CLASSES, CAPTION_REQUEST, LOOKUP_POOLS, N_VIDEO, TOKENS_PER_FRAME, Encoder, pad_batch,
                        pixels)
from .labels import (CELL, CGRID, GRID, LM_AUX_IGNORE, LM_AUX_MOTION, N_AUX, N_LM_AUX, PATCH, SINK, cell_fractions,
                     ground_tokens, lm_token_labels, patch_labels, question_object, track_tokens)
from .pruning import (PrunePlan, draw_plan, object_first_keep, pruned_forward, random_keep, remap_labels,
                      weighted_keep)
from .batches import (curriculum, frame_subset, frames_at, letter_weight_at, make_batch, make_indirect_batch,
                      make_lookup_batch, text_qa_batch)
from .heads import (AuxCapture, Binding, Grounding, LayerCapture, SupervisedHead, Tracking, head_keys,
                    head_log_attention, option_spans, option_tokens)
from .losses import (add_attention_loss, answer_loss, lookup_loss, ordinal_position_loss, patch_losses, position_loss,
                     train_loss)
from .vision import (VISION_EVAL_TASK, fmt_vision_eval, make_vision_eval_set, make_vision_optimizer, vision_batch,
                     vision_evaluate, vision_inputs, vision_loss, vision_parameters)
from .evaluation import evaluate, fmt_eval, make_eval_set
from .cli import DESCRIPTION, parse_args
from .checkpoints import command_line, grow_state_dict, save_checkpoint, save_model, source_layers
from .loop import GROUND_PROBE_LR_SCALE, lr_at, main, make_optimizer, to_device

__all__ = ["ANSWER_CLASSES", "CAPTION_REQUEST", "LOOKUP_POOLS", "N_VIDEO", "TOKENS_PER_FRAME", "Encoder", "pad_batch",
           "pixels",
           "CELL", "CGRID", "GRID", "LM_AUX_IGNORE", "LM_AUX_MOTION", "N_AUX", "N_LM_AUX", "PATCH", "SINK",
           "cell_fractions", "ground_tokens", "lm_token_labels", "patch_labels", "question_object", "track_tokens",
           "PrunePlan", "draw_plan", "object_first_keep", "pruned_forward", "random_keep", "remap_labels",
           "weighted_keep",
           "curriculum", "frame_subset", "frames_at", "letter_weight_at", "make_batch", "make_indirect_batch",
           "make_lookup_batch", "text_qa_batch",
           "AuxCapture", "Binding", "Grounding", "LayerCapture", "SupervisedHead", "Tracking", "head_keys",
           "head_log_attention", "option_spans", "option_tokens",
           "add_attention_loss", "answer_loss", "lookup_loss", "ordinal_position_loss", "patch_losses", "position_loss",
           "train_loss",
           "VISION_EVAL_TASK", "fmt_vision_eval", "make_vision_eval_set", "make_vision_optimizer", "vision_batch",
           "vision_evaluate", "vision_inputs", "vision_loss", "vision_parameters",
           "evaluate", "fmt_eval", "make_eval_set",
           "DESCRIPTION", "parse_args",
           "command_line", "grow_state_dict", "save_checkpoint", "save_model", "source_layers",
           "GROUND_PROBE_LR_SCALE", "lr_at", "main", "make_optimizer", "to_device"]
