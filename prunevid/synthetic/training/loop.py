"""One sitting of training: the learning-rate schedule, the optimizer, and ``main``, which builds or resumes the run,
trains, evaluates, checkpoints and exports the model."""
from __future__ import annotations

import json
import math
import os
import time

import torch

from ... import synthetic as S
from .. import demo_model as D
from .batches import make_batch, make_indirect_batch, make_lookup_batch
from .checkpoints import LAYER_KEY, _plain_args, command_line, grow_state_dict, save_checkpoint, save_model, source_layers
from .cli import parse_args
from .evaluation import evaluate, fmt_eval, make_eval_set
from .heads import AuxCapture, Binding, Grounding, LayerCapture, Tracking
from .labels import GRID, N_AUX, N_LM_AUX
from .losses import lookup_loss, train_loss
from .sequences import ANSWER_CLASSES, N_VIDEO, Encoder
from .vision import (fmt_vision_eval, make_vision_eval_set, make_vision_optimizer, vision_batch, vision_evaluate,
                     vision_loss, vision_parameters)


def to_device(batch, device):
    return tuple(x.to(device) if torch.is_tensor(x) else x for x in batch)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(1.0, (step - args.warmup) / max(args.steps - args.warmup, 1))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


GROUND_PROBE_LR_SCALE = 10.0


def make_optimizer(model, heads, args):
    decay, no_decay = [], []
    for mod in (model, heads):
        for n, p in mod.named_parameters():
            (decay if p.dim() >= 2 and "embed" not in n else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))


def init_from(path: str, model, heads, optional) -> None:
    """Start a new run from the weights and training-only heads of the trainer checkpoint at ``path`` (its step,
    optimizer and history are not carried over); a deeper model gets the source's LLM layers spread evenly over its
    own (``grow_state_dict``), the others starting as the identity. Heads the source lacks start fresh."""
    if not os.path.isfile(path):
        raise SystemExit(f"--init-from {path}: no such checkpoint")
    state = torch.load(path, weights_only=False, map_location="cpu")
    n_src = source_layers(state["model"])
    n_dst = model.config.text_config.num_hidden_layers
    sd = grow_state_dict(state["model"], n_src, n_dst)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    fresh = set(range(n_dst)) - {i * n_dst // n_src for i in range(n_src)}     # layers without a source
    bad = [k for k in missing if not any(k.startswith(f"{LAYER_KEY}{i}.") for i in fresh)]
    if bad or unexpected:
        raise SystemExit(f"--init-from {path}: weights do not fit --size (missing {bad[:3]}, unexpected "
                         f"{list(unexpected)[:3]})")
    heads.load_state_dict(state["heads"])
    for head, key in optional:
        if head is not None and key in state:
            head.load_state_dict(state[key])
    print(f"initialised from {path} (step {state.get('step')}): {n_src} -> {n_dst} LLM layers")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    log_path = os.path.join(args.out, "log.jsonl")

    tok = D.build_demo_tokenizer()
    enc = Encoder(tok)
    model, _ = D.build_demo_model(tok, args.size, seed=args.seed, zero_residuals=args.zero_init)
    model.train()
    torch.manual_seed(args.seed)
    aux_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(N_AUX))
    capture = AuxCapture(model)
    hidden = model.config.text_config.hidden_size
    lm_head = torch.nn.Linear(hidden, sum(N_LM_AUX)) if args.lm_aux_weight > 0 else None
    model.to(args.device)
    aux_head.to(args.device)
    if lm_head is not None:
        lm_head.to(args.device)
    n_layers = model.config.text_config.num_hidden_layers
    lm_capture = LayerCapture(model, args.lm_aux_layer % n_layers) if lm_head is not None else None
    heads = torch.nn.ModuleList([aux_head] + ([lm_head] if lm_head is not None else []))
    args.paren_id, args.letter_ids = tok.convert_tokens_to_ids("("), enc.letter_ids
    # --vision-only: AdamW over the tower, the projector and the per-patch head; of the optional heads only the
    # position heads join it (they read the projector output too)
    opt = make_vision_optimizer(model, aux_head, args) if args.vision_only else make_optimizer(model, heads, args)

    def join(head):
        if not args.vision_only or any(head is h for h in (pos_head, pos_ord_head)):
            opt.add_param_group({"params": list(head.parameters()), "weight_decay": args.weight_decay})
    # the answer head lives in its own parameter group, added last, so runs that start without it can resume with it
    answer_head = torch.nn.Linear(hidden, len(ANSWER_CLASSES)).to(args.device) if args.answer_aux_weight > 0 else None
    answer_capture = LayerCapture(model, args.answer_aux_layer % n_layers) if answer_head is not None else None
    n_params = sum(p.numel() for p in model.parameters())
    # the binding losses (probe head in its own parameter group, added after the answer head's)
    bind = Binding(model, tok, args) if (args.bind_weight > 0 or args.probe_weight > 0 or args.flag_weight > 0) \
        else None
    if bind is not None:
        bind.heads.to(args.device)
    grounding = Grounding(model, args) if args.ground_weight > 0 else None
    # the position head and the read-out probe (own parameter groups, added after the binding probe's, in this order)
    pos_head = torch.nn.Linear(hidden, 2 * GRID).to(args.device) if args.pos_weight > 0 else None
    ground_probe = grounding.probe.to(args.device) if grounding is not None and grounding.probe is not None else None
    tracking = Tracking(model, args) if args.track_weight > 0 else None
    track_probe = tracking.probe.to(args.device) if tracking is not None and tracking.probe is not None else None
    pos_ord_head = torch.nn.Linear(hidden, 2).to(args.device) if args.pos_ordinal_weight > 0 else None
    if pos_ord_head is not None:
        # zero: the loss starts at the targets' variance, not at a random read of large features that would take
        # over the clipped gradient of a trained model
        torch.nn.init.zeros_(pos_ord_head.weight)
        torch.nn.init.zeros_(pos_ord_head.bias)

    # optional heads join in a fixed order (answer head, binding probe, position head, read-out probe, track probe,
    # ordinal position head), each in its own parameter group; a head that joins a run which started without it
    # gets fresh moments, the others keep theirs
    optional = [(answer_head, "answer_head"), (bind.heads if bind is not None else None, "bind_heads"),
                (pos_head, "pos_head"), (ground_probe, "ground_probe"), (track_probe, "track_probe"),
                (pos_ord_head, "pos_ord_head")]

    step, train_seconds, history, averaged_from = 0, 0.0, [], None
    if os.path.isfile(ckpt_path) and not args.restart:
        state = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        if bool(state["args"].get("vision_only")) != args.vision_only:
            # their optimizers hold different parameters: one run cannot continue as the other
            raise SystemExit(f"{ckpt_path} is a {'vision-only' if state['args'].get('vision_only') else 'joint'} run's "
                             f"checkpoint and this command {'has' if args.vision_only else 'lacks'} --vision-only: "
                             "continue it as it was, or start a new run (--out) from it with --init-from")
        for k in ("size", "seed", "batch", "questions_per_video"):
            if state["args"].get(k) != getattr(args, k):
                print(f"warning: checkpoint has {k}={state['args'].get(k)}, command line {getattr(args, k)}")
        model.load_state_dict(state["model"])
        if "heads" in state:
            heads.load_state_dict(state["heads"])
        else:                                       # checkpoints written before the LM-side loss existed
            aux_head.load_state_dict(state["aux_head"])
        # a slim checkpoint (--slim) has no optimizer state: AdamW starts with fresh moments
        opt_state = state.get("optimizer")
        for head, key in optional:
            if head is not None and key in state:
                head.load_state_dict(state[key])
                join(head)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for head, key in optional:
            if head is not None and key not in state:
                join(head)
        if opt_state is None:
            print("note: checkpoint without optimizer state (slim): AdamW moments start afresh")
        torch.set_rng_state(state["torch_rng"])
        step, train_seconds, history = state["step"], state["train_seconds"], state["history"]
        averaged_from = state.get("averaged_from")          # weights made by average_checkpoints.py
        print(f"resumed from {ckpt_path} at step {step} ({train_seconds / 60:.1f} train-min)")
    else:
        if args.init_from:
            init_from(args.init_from, model, heads, optional)
        # the evaluation prompt and the first turn of a training sequence are the same tokens
        probe = S.make_item("moving_direction", S.item_rng(0, "moving_direction", 0))
        full = tok(D.render_prompt(tok, probe.item["question"], probe.item["candidates"], num_video_tokens=N_VIDEO),
                   add_special_tokens=False).input_ids
        assert enc.first_turn(probe.item["question"], probe.item["candidates"]) == full
        print(f"new run: size {args.size}, {n_params / 1e6:.2f} M parameters, seed {args.seed}")
        for head, _ in optional:
            if head is not None:
                join(head)

    for late in (ground_probe, track_probe, pos_ord_head):
        if late is None:
            continue
        # a fresh linear read of features the LLM already has, joining late when the schedule's rate is low: it
        # learns at GROUND_PROBE_LR_SCALE x that rate (its gradient into the LLM is the point)
        for g in opt.param_groups:
            if any(p is late.weight for p in g["params"]):
                g["lr_scale"] = GROUND_PROBE_LR_SCALE

    if args.vision_only:
        vision_items = make_vision_eval_set(args)
        eval_items = fixed_items = None
    else:
        eval_items = make_eval_set(args)
        fixed_items = make_eval_set(args, shuffle=False) if args.eval_fixed else None

    def run_eval():
        if args.vision_only:                         # the language model is not trained: only the per-patch read
            return {"vision": vision_evaluate(model, aux_head, capture, vision_items, args, pos_head, pos_ord_head)}
        r = evaluate(model, enc, eval_items, args)
        if fixed_items is not None:
            rf = evaluate(model, enc, fixed_items, args)
            r["fixed_order"] = {"accuracy": rf["accuracy"], "per_task": rf["per_task"]}
        if args.eval_blind:
            rb = evaluate(model, enc, eval_items, args, blind=True)
            r["blind"] = {"accuracy": rb["accuracy"], "per_task": rb["per_task"]}
        if args.eval_pruned_specs:
            r["pruned"] = {}
            for spec in args.eval_pruned_specs:
                rp = evaluate(model, enc, eval_items, args, pruned=spec)
                r["pruned"][":".join(str(v) for v in spec)] = {"accuracy": rp["accuracy"], "per_task": rp["per_task"]}
        return r

    def show(r):
        return fmt_vision_eval(r["vision"]) if args.vision_only else fmt_eval(r)

    if args.eval_only:
        r = run_eval()
        print(f"step {step}: {show(r)}")
        return 0
    if args.slim:
        state = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        state.pop("optimizer", None)
        out = os.path.join(args.out, "checkpoint-slim.pt")
        torch.save(state, out)
        print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, no optimizer state)")
        return 0
    planned_steps = args.steps
    if args.export:
        args.steps = step                            # skip the loop: straight to writing <out>/model

    def answer_args(step):
        if answer_capture is None:
            return None, None
        answer_capture.out = None
        return (answer_head, answer_capture) if step >= args.answer_aux_from else (None, answer_capture)

    # every trained parameter: the model, the always-on heads, the optional heads (--vision-only: its own few)
    clipped = ([*vision_parameters(model, aux_head),
                *(p for head in (pos_head, pos_ord_head) if head is not None for p in head.parameters())]
               if args.vision_only else
               [*model.parameters(), *heads.parameters(),
                *(p for head, _ in optional if head is not None for p in head.parameters())])
    t_sitting = time.time()
    ema = None
    while step < args.steps:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args) * g.get("lr_scale", 1.0)
        if args.vision_only:
            pix, labels = vision_batch(step, args)
            t_data = time.time() - t0
            loss, stats = vision_loss(model, aux_head, capture, pix, labels, args, pos_head, pos_ord_head)
            stats.pop("object_patches")
        elif step < args.lookup_pretrain:              # text-only phase: learn to bind answers to option letters
            t_data = 0.0
            loss, letter = lookup_loss(model, to_device(make_lookup_batch(step, args, enc, args.lookup_pretrain_batch),
                                                        args.device), args,
                                       *answer_args(step))
            stats = {"lookup_letter": letter}
        else:
            batch = to_device(make_batch(step, args, enc), args.device)
            t_data = time.time() - t0
            loss, stats = train_loss(model, aux_head, capture, batch, args, lm_head, lm_capture, enc.video_id,
                                     *answer_args(step), bind=bind, pos_head=pos_head, grounding=grounding,
                                     tracking=tracking, pos_ord_head=pos_ord_head)
        if args.lookup > 0 and step >= args.lookup_pretrain and not args.vision_only:
            l2, stats["lookup_letter"] = lookup_loss(model, to_device(make_lookup_batch(step, args, enc), args.device), args,
                                                     *answer_args(step), bind=bind, stats=stats, prefix="lookup_")
            loss = loss + args.lookup_weight * l2
        if args.indirect > 0 and step >= args.lookup_pretrain and not args.vision_only:
            l3, stats["indirect_letter"] = lookup_loss(model, to_device(make_indirect_batch(step, args, enc),
                                                                        args.device), args, *answer_args(step),
                                               bind=bind, stats=stats, prefix="indirect_")
            loss = loss + args.lookup_weight * l3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, 1.0)
        opt.step()
        step += 1
        dt = time.time() - t0
        train_seconds += dt
        ema = stats if ema is None else {k: 0.9 * ema.get(k, v) + 0.1 * v for k, v in stats.items()}
        if step % args.log_every == 0:
            print(f"step {step} | {train_seconds / 60:.1f} train-min | {dt:.2f} s/step (data {t_data:.2f}) | "
                  + " ".join(f"{k} {v:.3f}" for k, v in ema.items()) + f" | lr {lr_at(step - 1, args):.2e}",
                  flush=True)
        done = (step >= args.steps or (args.minutes and time.time() - t_sitting > 60 * args.minutes)
                or (args.stop_at and step >= args.stop_at))
        if (step % args.eval_every == 0 and step > args.lookup_pretrain) or done:
            r = run_eval()
            rec = {"step": step, "samples": step * args.batch, "train_minutes": round(train_seconds / 60, 2),
                   "loss": ema, **r}
            history.append(rec)
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"eval step {step} ({train_seconds / 60:.1f} train-min): {show(r)}", flush=True)
        if step % args.ckpt_every == 0 or done:
            save_checkpoint(ckpt_path, model, heads, opt, step, train_seconds, args, history, optional,
                            averaged_from)
        if done:
            break
    capture.handle.remove()
    for c in (lm_capture, answer_capture, bind, grounding):
        if c is not None:
            c.handle.remove()
    if tracking is not None:
        tracking.remove()
    model.eval()
    last = history[-1] if history else {}
    save_model(os.path.join(args.out, "model"), model, tok,
               {"step": step, "train_minutes": round(train_seconds / 60, 2), "args": _plain_args(args),
                "parameters": n_params, "last_eval": last,
                "command": command_line(args, steps=planned_steps, stop_at=step),
                **({"averaged_from": averaged_from} if averaged_from else {})})
    print(f"saved {os.path.join(args.out, 'model')} at step {step}")
    return 0
